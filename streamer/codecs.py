"""G.711 μ-law / A-law and PCM sample codecs with numpy lookup tables.

``audioop`` left the standard library in Python 3.13, so the decoders here are built
from the ITU-T G.711 bit layouts once, at first use, into 256-entry tables.
"""

from __future__ import annotations

from functools import cache

import numpy as np

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
