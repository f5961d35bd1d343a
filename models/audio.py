"""Audio shared by training, serving, the clients and the predict endpoint: one file
decoder (:func:`decode_audio`), G.711 μ-law / A-law and PCM sample codecs, and the
narrow-band telephone line used to augment, evaluate and benchmark.

``audioop`` left the standard library in Python 3.13, so the G.711 decoders here are built
from the ITU-T bit layouts once, at first use, into 256-entry tables.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

#: The rate every model here takes (the model card's ``sample_rate_hz``).
MODEL_RATE_HZ = 16_000
MAX_CHANNELS = 8
BLOCK_S = 1.0


class AudioError(ValueError):
    """Audio :func:`decode_audio` refuses.

    Attributes:
        unreadable: True when the data is not an audio file at all (or a missing file),
            False when it is audio callmon will not take (empty, too long, NaN samples).
    """

    def __init__(self, message: str, *, unreadable: bool) -> None:
        super().__init__(message)
        self.unreadable = unreadable


@dataclass(frozen=True, slots=True)
class Decoded:
    audio: np.ndarray  # float32 (samples, channels) in [-1, 1]
    source_rate: int
    source_channels: int


def decode_audio(source: Path | str | bytes, *, rate: int = MODEL_RATE_HZ,
                 stereo: bool = False, max_seconds: float | None = None) -> Decoded:
    """Decode any file libsndfile reads (a path or its bytes) to float32 at ``rate``.

    The file is read in one-second blocks, each down-mixed and resampled before the next,
    so memory follows the result, never the rate or channel count a header declares.

    Args:
        stereo: keep a two-channel file's channels apart (customer, agent, as the streamer
            takes them); otherwise, and for any other count, mix to one channel.
        max_seconds: refuse longer audio (read no further than that).

    Raises:
        AudioError: a missing or unreadable file, or audio that will not be scored.
    """
    name = "the upload" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        if not source:
            raise AudioError("the upload is empty", unreadable=False)
        handle: io.BytesIO | str = io.BytesIO(source)
    else:
        if not Path(source).is_file():
            raise AudioError(f"{source}: no such file", unreadable=True)
        handle = str(source)
    try:
        with sf.SoundFile(handle) as f:
            if f.samplerate <= 0 or f.channels <= 0:
                raise AudioError(f"{name}: the header has no valid rate or channel count",
                                 unreadable=True)
            if f.channels > MAX_CHANNELS:
                raise AudioError(f"{name}: {f.channels} channels, at most {MAX_CHANNELS} are "
                                 "accepted", unreadable=False)
            limit = None if max_seconds is None else int(max_seconds * f.samplerate) + 1
            if limit is not None and f.frames > limit * 1.01:
                # A header may claim hours; read at most the limit and say so.
                raise AudioError(f"audio longer than {max_seconds:g} s is not accepted",
                                 unreadable=False)
            audio, read = _decode_blocks(f, rate, stereo=stereo, limit=limit)
            source_rate, source_channels = f.samplerate, f.channels
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # Keep libsndfile's own reason, not soundfile's wrapping (which may name the
        # in-memory file object, a Python repr).
        reason = getattr(exc, "error_string", None) or str(exc).split(":", 1)[-1].strip()
        what = "the upload is" if isinstance(source, bytes) else f"{source} is"
        raise AudioError(f"{what} not a readable audio file ({reason}); callmon reads what "
                         "libsndfile reads: WAV, FLAC, Ogg, MP3 …", unreadable=True) from exc
    if read == 0:
        raise AudioError(f"{name} holds no audio samples", unreadable=False)
    if max_seconds is not None and read > max_seconds * source_rate:
        raise AudioError(f"audio longer than {max_seconds:g} s is not accepted",
                         unreadable=False)
    return Decoded(np.ascontiguousarray(np.clip(audio, -1, 1), dtype=np.float32),
                   source_rate, source_channels)


def _decode_blocks(f: sf.SoundFile, rate: int, *, stereo: bool, limit: int | None
                   ) -> tuple[np.ndarray, int]:
    block = max(1, int(BLOCK_S * f.samplerate))
    width = 2 if stereo and f.channels == 2 else 1
    resampler = (soxr.ResampleStream(f.samplerate, rate, width, dtype="float32", quality="HQ")
                 if f.samplerate != rate else None)
    parts: list[np.ndarray] = []
    read = 0
    while limit is None or read < limit:
        chunk = f.read(frames=block if limit is None else min(block, limit - read),
                       dtype="float32", always_2d=True)
        if chunk.shape[0] == 0:
            break
        read += chunk.shape[0]
        if not np.isfinite(chunk).all():
            raise AudioError("the audio contains NaN or infinite samples", unreadable=False)
        kept = chunk if chunk.shape[1] == width else chunk.mean(axis=1, keepdims=True)
        parts.append(kept if resampler is None else resampler.resample_chunk(kept))
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros((0, width), np.float32), last=True))
    out = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    return out, read


def load_mono(path: Path | str, *, rate: int = MODEL_RATE_HZ) -> np.ndarray:
    """A file as mono float32 at ``rate`` (corpora, test calls)."""
    return np.ascontiguousarray(decode_audio(path, rate=rate).audio[:, 0])

_MULAW_BIAS = 0x84
_MULAW_CLIP = 32635


@cache
def mulaw_table() -> np.ndarray:
    """int16 sample for each of the 256 μ-law code words."""
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa << 3) + _MULAW_BIAS) << exponent
    samples = np.where(sign != 0, _MULAW_BIAS - magnitude, magnitude - _MULAW_BIAS)
    return samples.astype(np.int16)


@cache
def alaw_table() -> np.ndarray:
    """int16 sample for each of the 256 A-law code words."""
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    samples = np.where(sign != 0, magnitude, -magnitude)
    return samples.astype(np.int16)


def decode_mulaw(data: bytes | np.ndarray) -> np.ndarray:
    """μ-law bytes → int16 samples."""
    return mulaw_table()[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes | np.ndarray) -> np.ndarray:
    """A-law bytes → int16 samples."""
    return alaw_table()[np.frombuffer(data, dtype=np.uint8)]


def encode_mulaw(samples: np.ndarray) -> np.ndarray:
    """int16 samples → μ-law code words (uint8), G.711 segment encoding."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _MULAW_CLIP) + _MULAW_BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def encode_alaw(samples: np.ndarray) -> np.ndarray:
    """int16 samples → A-law code words (uint8), G.711 segment encoding."""
    x = samples.astype(np.int32) >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.where(x >= 0, x, -x - 1)
    segment_ends = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    segment = np.searchsorted(segment_ends, magnitude)
    mantissa = np.where(segment < 2, magnitude >> 1, magnitude >> np.maximum(segment, 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """[-1, 1] float audio → int16, clipped."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


@cache
def _telephone_band() -> np.ndarray:
    from scipy.signal import butter

    return butter(4, [300.0, 3400.0], btype="bandpass", fs=8000, output="sos")


def telephone_line(audio: np.ndarray, *, rate: int = MODEL_RATE_HZ) -> np.ndarray:
    """Audio as it arrives from a narrow-band telephone line: 8 kHz, 300–3400 Hz
    band-pass, G.711 μ-law (float32 at 8 kHz)."""
    from scipy.signal import sosfilt

    narrow = soxr.resample(audio, rate, 8000, quality="HQ")
    narrow = sosfilt(_telephone_band(), narrow).astype(np.float32)
    return decode_mulaw(encode_mulaw(float_to_int16(narrow)).tobytes()).astype(np.float32) / 32768.0


def telephone_channel(audio: np.ndarray, *, rate: int = MODEL_RATE_HZ) -> np.ndarray:
    """A telephone line (:func:`telephone_line`) and back to ``rate``, same length."""
    coded = telephone_line(audio, rate=rate)
    wide = soxr.resample(coded, 8000, rate, quality="HQ")
    out = np.zeros_like(audio)
    out[: min(len(wide), len(out))] = wide[: len(out)]
    return out
