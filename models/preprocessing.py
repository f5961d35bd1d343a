"""Waveform preparation shared by training, evaluation and serving (numpy only)."""

from __future__ import annotations

import numpy as np


def as_batch(waveform: np.ndarray) -> np.ndarray:
    """Accept ``(samples,)`` or ``(batch, samples)`` audio; return a float32 2-D batch.

    Raises:
        ValueError: wrong rank, empty, or non-finite samples.
    """
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected audio of shape (samples,) or (batch, samples), got {x.shape}")
    if x.shape[1] == 0 or x.shape[0] == 0:
        raise ValueError(f"empty audio (shape {np.shape(waveform)}): need at least one sample")
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    return x


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop or zero-pad (centred) the last axis to ``length`` samples."""
    n = x.shape[-1]
    if n == length:
        return x
    if n > length:
        start = (n - length) // 2
        return x[..., start : start + length]
    pad = length - n
    widths = [(0, 0)] * (x.ndim - 1) + [(pad // 2, pad - pad // 2)]
    return np.pad(x, widths)


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start offsets of ``window``-long frames with ``hop`` covering ``n_samples``.

    The last window is aligned to the end so the tail is never ignored; audio shorter
    than one window yields a single (to be padded) window at 0.
    """
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] != n_samples - window:
        starts.append(n_samples - window)
    return starts


def clip_windows(audio: np.ndarray, window: int, hop: int) -> np.ndarray:
    """All windows of a clip as ``(n_windows, window)``, padding a short clip."""
    starts = window_starts(audio.shape[0], window, hop)
    return np.stack([fit_length(audio[s : s + window], window) for s in starts])
