"""Whisper's log-mel filterbank, computed with numpy so serving needs no librosa."""

from __future__ import annotations

import numpy as np

from models.audio import MODEL_RATE_HZ as SAMPLE_RATE_HZ

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80


def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    # Linear below 1 kHz, logarithmic above (Slaney's Auditory Toolbox, as librosa and Whisper).
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_region = freq >= min_log_hz
    mels = np.where(
        log_region, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels
    )
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    return np.where(log_region, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(
    *, sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, shape ``(n_mels, n_fft // 2 + 1)``.

    Identical to ``librosa.filters.mel(sr, n_fft, n_mels)``, which Whisper was trained with.
    """
    fft_freqs = np.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1)
    mel_min, mel_max = _hz_to_mel_slaney(np.array([0.0, sample_rate_hz / 2]))
    mel_points = np.linspace(mel_min, mel_max, n_mels + 2)
    hz_points = _mel_to_hz_slaney(mel_points)
    fdiff = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (hz_points[2 : n_mels + 2] - hz_points[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)
