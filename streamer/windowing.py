"""Per-channel audio path: streaming resampler → ring buffer → fixed windows → VAD gate."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import soxr

from models.audio import MODEL_RATE_HZ


@dataclass(frozen=True, slots=True)
class Window:
    """One window of one channel, ready for inference (or marked silent)."""

    call_id: str
    role: str
    channel: int
    index: int
    start_s: float
    end_s: float
    samples: np.ndarray  # float32, MODEL_RATE_HZ
    speech_ratio: float
    speech: bool
    ready_at: float  # time.monotonic() when its last sample arrived


class RingBuffer:
    """Fixed-capacity float32 ring that remembers how many samples were ever written."""

    def __init__(self, capacity: int) -> None:
        self.buffer = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.written = 0  # total samples ever written

    def write(self, samples: np.ndarray) -> None:
        n = samples.shape[0]
        if n >= self.capacity:
            samples = samples[-self.capacity :]
            self.written += n - self.capacity
            n = self.capacity
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.buffer[start : start + first] = samples[:first]
        self.buffer[: n - first] = samples[first:]
        self.written += n

    def read(self, end: int, length: int) -> np.ndarray:
        """The ``length`` samples ending at absolute position ``end`` (a copy)."""
        if end > self.written or end - length < self.written - self.capacity or length > end:
            raise IndexError("requested samples are not in the ring")
        start = (end - length) % self.capacity
        if start + length <= self.capacity:
            return self.buffer[start : start + length].copy()
        first = self.capacity - start
        return np.concatenate([self.buffer[start:], self.buffer[: length - first]])


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Energy-based voice-activity gate.

    A 20 ms frame counts as speech when it is louder than ``min_dbfs`` and more than
    ``margin_db`` above the channel's running noise floor; a window is speech when at
    least ``min_speech_ratio`` of its frames are.
    """

    frame_ms: float = 20.0
    min_dbfs: float = -60.0
    margin_db: float = 10.0
    min_speech_ratio: float = 0.2
    floor_adapt: float = 0.05


class EnergyVad:
    """Per-channel state: the running noise floor."""

    def __init__(self, config: VadConfig, rate_hz: int = MODEL_RATE_HZ) -> None:
        self.config = config
        self.frame = int(rate_hz * config.frame_ms / 1000)
        self.noise_floor_db: float | None = None

    def reset(self) -> None:
        self.noise_floor_db = None

    def speech_ratio(self, window: np.ndarray) -> float:
        n = window.shape[0] // self.frame
        if n == 0:
            return 0.0
        frames = window[: n * self.frame].reshape(n, self.frame)
        db = 10 * np.log10(np.square(frames, dtype=np.float64).mean(axis=1) + 1e-12)
        quiet = percentile(db, 10)
        if self.noise_floor_db is None:
            self.noise_floor_db = quiet
        else:
            # Falls fast (a quieter line), rises slowly (so speech does not become the floor).
            rate = 0.5 if quiet < self.noise_floor_db else self.config.floor_adapt
            self.noise_floor_db += rate * (quiet - self.noise_floor_db)
        threshold = max(self.config.min_dbfs, self.noise_floor_db + self.config.margin_db)
        return float(np.mean(db > threshold))


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation, the same float to the last bit) from
    a partial sort: numpy's general path costs several times more on the 150 frame levels of
    a window, once per window of every call."""
    n = values.shape[0]
    pos = q / 100 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    part = np.partition(values, (lo, hi))
    a, b, t = part[lo], part[hi], pos - lo
    # numpy's lerp: from the nearer end, so that t = 1 gives b exactly.
    return float(b - (b - a) * (1 - t)) if t >= 0.5 else float(a + (b - a) * t)


class ChannelWindower:
    """Turns one channel's audio, at any input rate, into model windows.

    Args:
        input_rate_hz: the rate audio arrives at; resampled to 16 kHz with a streaming
            soxr resampler whose state persists across frames (no clicks at frame joins).
        window_s, hop_s: window length and hop.
    """

    def __init__(self, *, call_id: str, role: str, channel: int, input_rate_hz: int,
                 window_s: float = 3.0, hop_s: float = 1.0,
                 vad: VadConfig | None = None) -> None:
        self.call_id = call_id
        self.role = role
        self.channel = channel
        self.window = int(round(window_s * MODEL_RATE_HZ))
        self.hop = int(round(hop_s * MODEL_RATE_HZ))
        if self.hop <= 0 or self.window <= 0:
            raise ValueError("window and hop must be positive")
        self.resampler = (
            soxr.ResampleStream(input_rate_hz, MODEL_RATE_HZ, 1, dtype="float32", quality="HQ")
            if input_rate_hz != MODEL_RATE_HZ else None
        )
        self.input_rate_hz = input_rate_hz
        self.ring = RingBuffer(self.window + 4 * MODEL_RATE_HZ)
        self.vad = EnergyVad(vad or VadConfig())
        self.next_end = self.window
        self.index = 0
        self.input_samples = 0

    def reset(self) -> None:
        self.__init__(call_id=self.call_id, role=self.role, channel=self.channel,  # type: ignore[misc]
                      input_rate_hz=self.input_rate_hz, window_s=self.window / MODEL_RATE_HZ,
                      hop_s=self.hop / MODEL_RATE_HZ, vad=self.vad.config)

    def feed(self, samples: np.ndarray, *, last: bool = False) -> list[Window]:
        """Add input-rate samples; return the windows they complete."""
        self.input_samples += samples.shape[0]
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(np.ascontiguousarray(samples), last=last)
        now = time.monotonic()
        out: list[Window] = []
        # Write in slices no longer than the ring's slack, emitting windows in between, so a
        # large block never overwrites audio that a pending window still needs.
        step = self.ring.capacity - self.window
        for offset in range(0, samples.shape[0], step):
            self.ring.write(samples[offset : offset + step])
            while self.ring.written >= self.next_end:
                out.append(self._window(now))
        return out

    def _window(self, now: float) -> Window:
        audio = self.ring.read(self.next_end, self.window)
        ratio = self.vad.speech_ratio(audio)
        window = Window(
            call_id=self.call_id, role=self.role, channel=self.channel, index=self.index,
            start_s=(self.next_end - self.window) / MODEL_RATE_HZ,
            end_s=self.next_end / MODEL_RATE_HZ, samples=audio, speech_ratio=ratio,
            speech=ratio >= self.vad.config.min_speech_ratio, ready_at=now,
        )
        self.index += 1
        self.next_end += self.hop
        return window

    @property
    def duration_s(self) -> float:
        return self.input_samples / self.input_rate_hz
