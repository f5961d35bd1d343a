"""Waveform augmentation: random crops, a telephone channel, noise and gain."""

from __future__ import annotations

import numpy as np
import soxr
from scipy.signal import lfilter

from models.audio import MODEL_RATE_HZ as SAMPLE_RATE_HZ
from models.audio import telephone_channel


def crop(audio: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A ``length``-sample crop: random with ``rng``, centred without; shorter audio is
    zero-padded (at a random offset with ``rng``)."""
    n = audio.shape[0]
    if n >= length:
        start = int(rng.integers(0, n - length + 1)) if rng is not None else (n - length) // 2
        return audio[start : start + length].copy()
    out = np.zeros(length, dtype=np.float32)
    start = int(rng.integers(0, length - n + 1)) if rng is not None else (length - n) // 2
    out[start : start + n] = audio
    return out


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator,
              noise: np.ndarray | None = None) -> np.ndarray:
    """Add ``noise`` (or coloured Gaussian noise) at ``snr_db`` relative to the signal power."""
    if noise is None:
        white = np.asarray(rng.standard_normal(audio.shape[0]), dtype=np.float32)
        # A random spectral tilt between white and brown-ish, as background hum and hiss vary.
        alpha = float(rng.uniform(0.0, 0.95))
        noise = np.asarray(lfilter([1.0], [1.0, -alpha], white), dtype=np.float32)
    signal_power = float(np.mean(audio**2)) + 1e-10
    noise_power = float(np.mean(noise**2)) + 1e-10
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)


def random_gain(audio: np.ndarray, rng: np.random.Generator, *, low_db: float = -12.0,
                high_db: float = 6.0) -> np.ndarray:
    gain = 10 ** (rng.uniform(low_db, high_db) / 20)
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and tempo together, as Kaldi's speed perturbation):
    shifts formants and pitch the way a different speaker's vocal tract would."""
    return np.asarray(soxr.resample(audio, SAMPLE_RATE_HZ * factor, SAMPLE_RATE_HZ, quality="HQ"),
                      dtype=np.float32)


def augment(
    audio: np.ndarray,
    rng: np.random.Generator,
    *,
    p_telephone: float = 0.5,
    p_noise: float = 0.5,
    snr_db: tuple[float, float] = (5.0, 30.0),
    p_gain: float = 0.8,
) -> np.ndarray:
    """The training-time chain: telephone channel, additive noise, gain, each by chance."""
    if rng.random() < p_telephone:
        audio = telephone_channel(audio)
    if rng.random() < p_noise:
        audio = add_noise(audio, float(rng.uniform(*snr_db)), rng)
    if rng.random() < p_gain:
        audio = random_gain(audio, rng)
    return audio
