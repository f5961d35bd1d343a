"""File predictions: decode an upload, score it window by window, summarise."""

from __future__ import annotations

import numpy as np

from models.audio import MODEL_RATE_HZ, AudioError, decode_audio


class AudioRejected(ValueError):
    """An upload that is not usable audio; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, *, max_seconds: float) -> tuple[np.ndarray, int, int]:
    """Bytes of any libsndfile-readable file → 16 kHz float32 (models.audio.decode_audio:
    read block by block, so memory follows the 16 kHz result, never what a header claims).

    Returns:
        (audio ``(samples, channels)`` with 2 channels for a stereo file (customer, agent)
        and 1 otherwise, original sample rate, original channels)

    Raises:
        AudioRejected: 415 for non-audio or corrupt data, 422 for audio we will not score
            (empty, too long, too many channels, NaN/inf samples).
    """
    try:
        decoded = decode_audio(data, rate=MODEL_RATE_HZ, stereo=True, max_seconds=max_seconds)
    except AudioError as exc:
        raise AudioRejected(415 if exc.unreadable else 422, str(exc)) from None
    return decoded.audio, decoded.source_rate, decoded.source_channels


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
    from streamer.windowing import VadConfig, VoiceGate

    starts, probs = model.predict_windows(audio, hop_s=hop_s)
    vad = VoiceGate(VadConfig())
    window = model.window_samples
    speech = []
    for s in starts:
        i = int(round(s * MODEL_RATE_HZ))
        chunk = audio[i : i + window]
        speech.append(vad.speech_ratio(chunk, i) >= vad.config.min_speech_ratio)
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
