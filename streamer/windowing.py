"""Per-channel audio path: streaming resampler → ring buffer → fixed windows → voice gate."""

from __future__ import annotations

import math
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
    """The voice gate: which windows are speech, and so scored.

    A 20 ms frame is loud when its level (about the window's mean: a DC offset is no level)
    is above ``min_dbfs`` and more than ``margin_db`` above the channel's running noise
    floor; a window is speech when at least ``min_speech_ratio`` of its frames are loud,
    unless its loud frames are mostly not a voice. Of each loud frame a 32 ms spectrum
    (100-3800 Hz, the telephone band) is taken: the frame is a tone when its six strongest
    31 Hz bins hold ``tone_share`` of its power, and noise when its spectrum is as flat as
    ``noise_flatness`` (geometric over arithmetic mean of the power: white noise 0.56,
    speech's loud frames 0.02-0.04 at the median). A window whose loud frames are
    ``max_tone_or_noise`` or more tones, or as many noise, has no speech: ringback, busy
    and DTMF tones, and noise bursts, which the model would otherwise score (a ringback
    tone as distress). ``None`` turns the check off.
    """

    frame_ms: float = 20.0
    min_dbfs: float = -60.0
    margin_db: float = 10.0
    min_speech_ratio: float = 0.2
    floor_adapt: float = 0.05
    tone_share: float = 0.95
    noise_flatness: float = 0.3
    max_tone_or_noise: float | None = 0.65


#: The band the tone and noise measures look at: a telephone line carries nothing else.
VOICE_BAND_HZ = (100.0, 3800.0)
#: A tone's power lies in this many bins of its 32 ms spectrum (31 Hz each): a Hann-tapered
#: sinusoid's main lobe is three, and call-progress tones are one or two sinusoids.
TONE_BINS = 6


class VoiceGate:
    """One channel's voice gate (:class:`VadConfig`). Its state: the running noise floor,
    and what it measured of each frame, which the next windows (two thirds the same
    audio at a 1 s hop) take instead of measuring it again."""

    def __init__(self, config: VadConfig, rate_hz: int = MODEL_RATE_HZ) -> None:
        self.config = config
        self.frame = int(rate_hz * config.frame_ms / 1000)
        self.noise_floor_db: float | None = None
        # The spectrum of a loud frame: 32 ms (512 samples at 16 kHz) from its start.
        self.n_fft = 1 << int(np.ceil(np.log2(rate_hz * 0.032)))
        self.taper = np.hanning(self.n_fft).astype(np.float32)
        bins = np.fft.rfftfreq(self.n_fft, 1 / rate_hz)
        inside = np.flatnonzero((bins >= VOICE_BAND_HZ[0]) & (bins <= VOICE_BAND_HZ[1]))
        self.band = slice(int(inside[0]), int(inside[-1]) + 1)
        # Per frame slot (absolute frame index modulo the size): the frame held, -1 none.
        self._held = np.full(0, -1)
        self._tone = np.zeros(0, bool)
        self._noise = np.zeros(0, bool)

    def reset(self) -> None:
        self.noise_floor_db = None
        self._held[:] = -1

    def speech_ratio(self, window: np.ndarray, start: int | None = None) -> float:
        """The share of the window's frames that are speech: its loud frames, or none when
        those are mostly tones or noise.

        Args:
            start: the window's first sample counted from the channel's start; when it falls
                on a frame boundary, frames measured in an earlier window are not measured
                again.
        """
        n = window.shape[0] // self.frame
        if n == 0:
            return 0.0
        # Levels about the window's mean: a DC offset (a sound card's, a gateway's) is no
        # voice, and counted as level it lifted the noise floor over quiet speech.
        # In float32, as the audio is: numpy's float32 sums are pairwise or vectorised, and
        # casting 48 000 samples to float64 cost more than the rest of the levels. The mean
        # as ndarray.mean computes it, without its Python wrapper.
        frames = window[: n * self.frame].reshape(n, self.frame)
        centred = frames - np.add.reduce(frames, axis=None, dtype=np.float32) / np.float32(
            frames.size)
        power = np.einsum("ij,ij->i", centred, centred).astype(np.float64) / self.frame
        db = 10 * np.log10(power + 1e-12)
        quiet = percentile(db, 10)
        if self.noise_floor_db is None:
            self.noise_floor_db = quiet
        else:
            # Falls fast (a quieter line), rises slowly (so speech does not become the floor).
            rate = 0.5 if quiet < self.noise_floor_db else self.config.floor_adapt
            self.noise_floor_db += rate * (quiet - self.noise_floor_db)
        threshold = max(self.config.min_dbfs, self.noise_floor_db + self.config.margin_db)
        loud = db > threshold
        ratio = int(np.count_nonzero(loud)) / n
        if ratio >= self.config.min_speech_ratio and self._not_a_voice(window, loud, start):
            return 0.0
        return ratio

    def _not_a_voice(self, window: np.ndarray, loud: np.ndarray, start: int | None) -> bool:
        """Whether the loud frames are mostly tones, or mostly noise.

        Frames are measured only until the answer is certain: until the tones or the noise
        already reach ``max_tone_or_noise`` of the loud frames, or the frames known to be
        neither are too many for the unmeasured rest to make them reach it. A window of
        speech so measures about a third of its loud frames, taken from its end, which
        serve the next two windows (at a 1 s hop) as well. The answer is always the one
        measuring every loud frame gives.
        """
        most = self.config.max_tone_or_noise
        if most is None:
            return False
        wanted = np.flatnonzero(loud)
        count = wanted.shape[0]
        if count == 0:
            return False
        # What earlier windows measured serves when this one starts on a frame boundary.
        first = start // self.frame if start is not None and start % self.frame == 0 else None
        if first is not None:
            n = loud.shape[0]
            if self._held.shape[0] < 2 * n:
                self._held, self._tone, self._noise = (
                    np.full(2 * n, -1), np.zeros(2 * n, bool), np.zeros(2 * n, bool))
            frame = first + wanted
            slot = frame % self._held.shape[0]
            known = self._held[slot] == frame
            tone, noise = self._tone[slot], self._noise[slot]
        else:
            known, tone, noise = (np.zeros(count, bool) for _ in range(3))
        # Frames too near the window's end for 32 ms of their own are not kept (the next
        # window measures them whole), so they come last; before them the latest first.
        kept = wanted < self._spans(window.shape[0])
        unknown = np.flatnonzero(~known)
        order = np.concatenate([unknown[kept[unknown]][::-1], unknown[~kept[unknown]]])
        while True:
            verdict, short = _verdict(tone, noise, known, most)
            if verdict is not None:
                return verdict
            # Half as many again: a few of them turn out tones or noise (a fricative's spectrum
            # is flat), and a second round costs more than the extra rows.
            take = short + short // 2 + 2
            rows, order = order[:take], order[take:]
            tone[rows], noise[rows] = self._measure(window, wanted[rows])
            known[rows] = True
            if first is not None:
                keep = rows[kept[rows]]
                self._held[slot[keep]] = frame[keep]
                self._tone[slot[keep]], self._noise[slot[keep]] = tone[keep], noise[keep]

    def _spans(self, samples: int) -> int:
        """How many frames of a window have their 32 ms inside it."""
        return max((samples - self.n_fft) // self.frame + 1, 0)

    def _measure(self, window: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the window's ``frames`` (indices) are tones, and which noise. A frame's
        spectrum is of the 32 ms from its start; the last frames, too near the window's end
        for that, take the last 32 ms that start on a frame."""
        if window.shape[0] < self.n_fft:
            window = np.pad(window, (0, self.n_fft - window.shape[0]))
        window = np.ascontiguousarray(window)
        # The 32 ms from each frame's start, as a view (sliding_window_view's checks cost
        # more than the strides).
        spans = np.lib.stride_tricks.as_strided(
            window, (self._spans(window.shape[0]), self.n_fft),
            (self.frame * window.strides[0], window.strides[0]), writeable=False)
        rows = np.minimum(frames, spans.shape[0] - 1)
        # The transform in float64 (numpy's float32 one is slower); the power's logarithm and
        # its strongest bins in float32, whose vectorised log and partition cost half as much
        # (a share or flatness moves by about 1e-7 against thresholds of 0.95 and 0.3).
        spectrum = np.fft.rfft((spans[rows] * self.taper).astype(np.float64))[:, self.band]
        power = np.square(spectrum.real) + np.square(spectrum.imag) + 1e-12
        total = power.sum(axis=1)
        power32 = power.astype(np.float32)
        # numpy's mean is this sum over the count: the same value, one reduction fewer.
        flatness = np.exp(np.log(power32).sum(axis=1, dtype=np.float64) / power.shape[1]) / (
            total / power.shape[1])
        return (top_bins_share(power32, total) >= self.config.tone_share,
                flatness >= self.config.noise_flatness)


def _verdict(tone: np.ndarray, noise: np.ndarray, known: np.ndarray, most: float
             ) -> tuple[bool | None, int]:
    """Whether frames are mostly tones or mostly noise (a share of ``most`` or more of them),
    from the frames ``known`` so far: ``None`` while the rest could still tip it, with at
    least how many more need measuring before it can be answered."""
    count = known.shape[0]
    measured = int(np.count_nonzero(known))
    tones = int(np.count_nonzero(tone & known))
    noises = int(np.count_nonzero(noise & known))
    # Shares as numpy's mean of the frames' flags computes them (an exact count over the
    # frame count): the same float compared, so the same answer as measuring every frame.
    if tones / count >= most or noises / count >= most:
        return True, 0
    unknown = count - measured
    if (max(tones, noises) + unknown) / count < most:
        return False, 0
    # Even if every frame still unknown were neither, this many must be for the larger of
    # the two shares, at most its own frames and the unknown ones, to fall under ``most``.
    return None, max(1, math.floor(max(tones, noises) + unknown - most * count) + 1)


def top_bins_share(power: np.ndarray, total: np.ndarray, bins: int = TONE_BINS) -> np.ndarray:
    """Per row of a power spectrum whose rows sum to ``total``, the share held by its
    ``bins`` strongest bins."""
    return np.partition(power, -bins, axis=1)[:, -bins:].sum(axis=1) / total


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
        self.vad = VoiceGate(vad or VadConfig())
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
        start = self.next_end - self.window
        ratio = self.vad.speech_ratio(audio, start)
        window = Window(
            call_id=self.call_id, role=self.role, channel=self.channel, index=self.index,
            start_s=start / MODEL_RATE_HZ,
            end_s=self.next_end / MODEL_RATE_HZ, samples=audio, speech_ratio=ratio,
            speech=ratio >= self.vad.config.min_speech_ratio, ready_at=now,
        )
        self.index += 1
        self.next_end += self.hop
        return window

    @property
    def duration_s(self) -> float:
        return self.input_samples / self.input_rate_hz
