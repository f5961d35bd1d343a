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
        (audio ``(samples, channels)`` with 2 channels for a stereo file (customer, agent)
        and 1 otherwise, original sample rate, original channels)

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
            audio, read = _decode_blocks(f, rate, limit=int(max_seconds * rate) + 1)
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
    return np.ascontiguousarray(np.clip(audio, -1, 1), dtype=np.float32), rate, channels


def _decode_blocks(f: sf.SoundFile, rate: int, *, limit: int) -> tuple[np.ndarray, int]:
    """Read up to ``limit`` frames block by block → (16 kHz ``(samples, 1 or 2)``, frames
    read).

    Raises:
        AudioRejected: NaN or infinite samples.
    """
    block = max(1, int(BLOCK_S * rate))
    width = 2 if f.channels == 2 else 1
    resampler = (soxr.ResampleStream(rate, MODEL_RATE_HZ, width, dtype="float32", quality="HQ")
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
        # Stereo stays two channels (customer, agent, as the streamer takes them); more
        # channels are mixed down.
        kept = chunk if chunk.shape[1] == 2 else chunk.mean(axis=1, keepdims=True)
        parts.append(kept if resampler is None else resampler.resample_chunk(kept))
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros((0, width), np.float32), last=True))
    out = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    return out, read


ROLES = ("customer", "agent")


def predict(model, audio: np.ndarray, *, hop_s: float = 1.0) -> dict:
    """Score a decoded upload as the streamer scores a call: 3 s windows every ``hop_s``,
    the voice gate deciding which windows are speech. A stereo upload is scored per
    channel (customer, agent); the top-level result is the customer's (or the mono one's).
    """
    audio = audio if audio.ndim == 2 else audio[:, None]
    results = {role: predict_channel(model, audio[:, i], hop_s=hop_s)
               for i, role in enumerate(ROLES[: audio.shape[1]])}
    out = dict(results["customer"])
    if len(results) > 1:
        out["channels"] = results
    return out


def predict_channel(model, audio: np.ndarray, *, hop_s: float = 1.0) -> dict:
    """One channel: the mean over its speech windows, and a per-window timeline for clips
    over one window. Without speech, ``speech`` is false and there is no label."""
    from streamer.windowing import EnergyVad, VadConfig

    starts, probs = model.predict_windows(audio, hop_s=hop_s)
    vad = EnergyVad(VadConfig())
    window = model.window_samples
    speech = []
    for s in starts:
        i = int(round(s * MODEL_RATE_HZ))
        chunk = audio[i : i + window]
        speech.append(vad.speech_ratio(chunk) >= vad.config.min_speech_ratio)
    labels = list(model.labels)
    duration = round(audio.shape[0] / MODEL_RATE_HZ, 3)
    out: dict = {"duration_s": duration, "speech": any(speech), "windows": []}
    if any(speech):
        mean = probs[np.asarray(speech)].mean(axis=0)
        best = int(mean.argmax())
        out.update(label=labels[best], confidence=round(float(mean[best]), 4),
                   scores={lab: round(float(p), 4) for lab, p in zip(labels, mean, strict=True)})
    else:
        out.update(label=None, confidence=None, scores=None,
                   message="no speech: the voice gate found none in any window")
    window_s = window / MODEL_RATE_HZ
    if len(starts) > 1:
        out["windows"] = [
            {"start_s": round(float(s), 3),
             "end_s": round(min(float(s) + window_s, duration), 3), "speech": bool(sp),
             "label": labels[int(p.argmax())] if sp else None,
             "scores": {lab: round(float(x), 4) for lab, x in zip(labels, p, strict=True)}
             if sp else None}
            for s, p, sp in zip(starts, probs, speech, strict=True)
        ]
    return out
