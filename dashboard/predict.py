"""File predictions: decode an upload, score it window by window, summarise."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

MODEL_RATE_HZ = 16_000
MAX_CHANNELS = 8
BLOCK_S = 1.0  # decoded, down-mixed and resampled one block at a time


class AudioRejected(ValueError):
    """An upload that is not usable audio; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, *, max_seconds: float) -> tuple[np.ndarray, int, int]:
    """Bytes of any soundfile-readable file → 16 kHz mono float32.

    The file is decoded in one-second blocks, each down-mixed and resampled before the
    next is read, so memory follows the 16 kHz mono result (≤ 38 MB for 10 minutes),
    never the rate or channel count a header declares.

    Returns:
        (audio, original sample rate, original channels)

    Raises:
        AudioRejected: 415 for non-audio or corrupt data, 422 for audio we will not score
            (empty, too long, NaN/inf samples).
    """
    if not data:
        raise AudioRejected(422, "the upload is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            if rate <= 0 or channels <= 0:
                raise AudioRejected(415, "the file's header has no valid rate or channel count")
            if channels > MAX_CHANNELS:
                raise AudioRejected(422, f"{channels} channels: at most {MAX_CHANNELS} are "
                                    "accepted")
            if frames > max_seconds * rate * 1.01:
                # A header may claim hours; read at most the limit and say so.
                raise AudioRejected(422, f"audio longer than {max_seconds:g} s is not accepted")
            mono, read = _decode_blocks(f, rate, limit=int(max_seconds * rate) + 1)
    except AudioRejected:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # soundfile's message names the in-memory file object (a Python repr): keep only
        # libsndfile's own reason.
        reason = str(exc).split(":", 1)[-1].strip() if "<" in str(exc) else str(exc)
        raise AudioRejected(415, f"not a readable audio file: {reason}") from exc
    if read == 0:
        raise AudioRejected(422, "the file holds no audio samples")
    if read > max_seconds * rate:
        raise AudioRejected(422, f"audio longer than {max_seconds:g} s is not accepted")
    return np.ascontiguousarray(np.clip(mono, -1, 1), dtype=np.float32), rate, channels


def _decode_blocks(f: sf.SoundFile, rate: int, *, limit: int) -> tuple[np.ndarray, int]:
    """Read up to ``limit`` frames block by block → (16 kHz mono, frames read).

    Raises:
        AudioRejected: NaN or infinite samples.
    """
    block = max(1, int(BLOCK_S * rate))
    resampler = (soxr.ResampleStream(rate, MODEL_RATE_HZ, 1, dtype="float32", quality="HQ")
                 if rate != MODEL_RATE_HZ else None)
    parts: list[np.ndarray] = []
    read = 0
    while read < limit:
        chunk = f.read(frames=min(block, limit - read), dtype="float32", always_2d=True)
        if chunk.shape[0] == 0:
            break
        read += chunk.shape[0]
        if not np.isfinite(chunk).all():
            raise AudioRejected(422, "the audio contains NaN or infinite samples")
        mono = chunk.mean(axis=1)
        parts.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return out, read


def predict(model, audio: np.ndarray, *, hop_s: float = 1.0) -> dict:
    """Overall label and confidences, and a per-window timeline for clips over one window."""
    starts, probs = model.predict_windows(audio, hop_s=hop_s)
    mean = probs.mean(axis=0)
    labels = list(model.labels)
    best = int(mean.argmax())
    out = {
        "label": labels[best],
        "confidence": round(float(mean[best]), 4),
        "scores": {lab: round(float(p), 4) for lab, p in zip(labels, mean, strict=True)},
        "duration_s": round(audio.shape[0] / MODEL_RATE_HZ, 3),
        "windows": [],
    }
    window_s = model.window_samples / MODEL_RATE_HZ
    if len(starts) > 1:
        out["windows"] = [
            {"start_s": round(float(s), 3), "end_s": round(min(float(s) + window_s,
                                                              out["duration_s"]), 3),
             "label": labels[int(p.argmax())],
             "scores": {lab: round(float(x), 4) for lab, x in zip(labels, p, strict=True)}}
            for s, p in zip(starts, probs, strict=True)
        ]
    return out
