"""Emotion label sets and the mappings from corpus labels onto them."""

from __future__ import annotations

#: The product's five classes, in the order of the model's output.
EMOTIONS_5: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful")

#: RAVDESS's eight classes, kept for comparison with published results.
EMOTIONS_8: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)

#: Emotions some corpora carry that neither label set has (skipped, like disgust for 5).
EXTRA_EMOTIONS: tuple[str, ...] = ("bored",)

LABEL_SETS: dict[str, tuple[str, ...]] = {"5": EMOTIONS_5, "8": EMOTIONS_8}

# Corpus spellings seen in the wild, normalised to the names above.
_ALIASES = {
    "neu": "neutral",
    "neutral": "neutral",
    "calm": "calm",
    "hap": "happy",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "ang": "angry",
    "anger": "angry",
    "angry": "angry",
    "fea": "fearful",
    "fear": "fearful",
    "fearful": "fearful",
    "dis": "disgust",
    "disgust": "disgust",
    "sur": "surprised",
    "surprise": "surprised",
    "surprised": "surprised",
    "bored": "bored",
    "boredom": "bored",
}


def normalise_emotion(name: str) -> str:
    """Return the canonical spelling of an emotion name.

    Raises:
        ValueError: if the name is not a known emotion.
    """
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown emotion label {name!r}; known: {sorted(set(_ALIASES.values()))}")
    return _ALIASES[key]


def map_to_label_set(name: str, labels: tuple[str, ...]) -> str | None:
    """Map a corpus emotion onto ``labels``.

    Calm counts as neutral whenever the label set has no calm class; classes the
    label set lacks (disgust and surprised for the five-class head) map to ``None``.
    """
    emotion = normalise_emotion(name)
    if emotion == "calm" and "calm" not in labels:
        emotion = "neutral"
    return emotion if emotion in labels else None
