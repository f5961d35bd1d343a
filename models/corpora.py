"""Speech-emotion corpora as lists of utterances, and speaker-independent folds.

Layouts understood:

* RAVDESS as shared here: ``manifest.csv`` with ``path,actor,...,emotion`` and 16 kHz FLAC.
* RAVDESS as distributed: ``Actor_XX/03-01-EE-II-SS-RR-AA.wav`` at 48 kHz (song files,
  vocal channel 02, are skipped).
* CREMA-D: ``AudioWAV/1001_DFA_ANG_XX.wav``.
* Any folder with a ``manifest.csv`` of ``path,speaker,emotion`` (paths relative to it);
  EmoDB as shared here is one.

Several corpora are read together with :func:`discover_corpora`; their speakers are then
named ``corpus/speaker`` (``ravdess/03``, ``emodb/03``) so that ids never collide.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.audio import MODEL_RATE_HZ as SAMPLE_RATE_HZ
from models.audio import load_mono
from models.labels import normalise_emotion

log = logging.getLogger(__name__)

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
CREMA_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_CREMA_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


@dataclass(frozen=True, slots=True)
class Utterance:
    """One labelled recording."""

    path: Path
    speaker: str
    emotion: str  # canonical name, see models.labels


class DatasetLayoutError(ValueError):
    """The folder is not a corpus layout callmon understands."""


def parse_ravdess_name(stem: str) -> tuple[str, str, bool] | None:
    """``03-01-05-02-01-01-12`` → ``("12", "angry", is_speech)``; ``None`` if not RAVDESS."""
    m = _RAVDESS_NAME.match(stem)
    if not m or m.group(3) not in RAVDESS_EMOTIONS:
        return None
    return m.group(7), RAVDESS_EMOTIONS[m.group(3)], m.group(2) == "01"


def parse_crema_name(stem: str) -> tuple[str, str] | None:
    """``1001_DFA_ANG_XX`` → ``("1001", "angry")``; ``None`` if not CREMA-D."""
    m = _CREMA_NAME.match(stem)
    if not m or m.group(3) not in CREMA_EMOTIONS:
        return None
    return m.group(1), CREMA_EMOTIONS[m.group(3)]


def _read_manifest(root: Path) -> list[Utterance]:
    with open(root / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        speaker_field = "speaker" if "speaker" in fields else "actor" if "actor" in fields else None
        if not {"path", "emotion"} <= fields or speaker_field is None:
            raise DatasetLayoutError(
                f"{root / 'manifest.csv'} needs columns path,speaker,emotion; has {sorted(fields)}"
            )
        items = []
        for row in reader:
            speaker = row[speaker_field].strip()
            if speaker_field == "actor" and speaker.isdigit():
                speaker = f"{int(speaker):02d}"
            items.append(
                Utterance(root / row["path"], speaker, normalise_emotion(row["emotion"]))
            )
    return items


def _read_ravdess_tree(root: Path) -> list[Utterance]:
    items = []
    for path in sorted(root.glob("Actor_*/*")):
        if path.suffix.lower() not in {".wav", ".flac"}:
            continue
        parsed = parse_ravdess_name(path.stem)
        if parsed is None:
            log.warning("skipping %s: not a RAVDESS file name", path)
            continue
        speaker, emotion, is_speech = parsed
        if is_speech:
            items.append(Utterance(path, speaker, emotion))
    return items


def _read_crema_tree(root: Path) -> list[Utterance]:
    folder = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    items = []
    for path in sorted(folder.glob("*.wav")):
        parsed = parse_crema_name(path.stem)
        if parsed is None:
            log.warning("skipping %s: not a CREMA-D file name", path)
            continue
        items.append(Utterance(path, *parsed))
    return items


def discover(root: Path | str) -> list[Utterance]:
    """Read whichever supported layout ``root`` holds.

    Raises:
        DatasetLayoutError: nothing recognisable is there.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a directory")
    if (root / "manifest.csv").is_file():
        items = _read_manifest(root)
    elif any(root.glob("Actor_*")):
        items = _read_ravdess_tree(root)
    else:
        items = _read_crema_tree(root)
    if not items:
        raise DatasetLayoutError(
            f"{root}: its manifest.csv lists no clips" if (root / "manifest.csv").is_file()
            else f"{root}: no manifest.csv, RAVDESS Actor_XX/ folders or CREMA-D AudioWAV/ "
                 "files found")
    return items


def corpus_name(root: Path | str) -> str:
    """The name a corpus folder goes by in speaker ids: its folder name, lower-case."""
    return Path(root).resolve().name.lower()


def speaker_id(corpus: str, speaker: str) -> str:
    """``corpus/speaker``; a speaker already named so is kept."""
    return speaker if "/" in speaker else f"{corpus}/{speaker}"


def card_split(training: dict | None) -> dict[str, list[str]]:
    """A model card's speaker split (its ``training`` block) by role, every speaker as
    ``corpus/speaker`` (a run on one corpus names its speakers bare)."""
    training = training or {}
    split = training.get("split") or {}
    data = (training.get("config") or {}).get("data", "")
    roots = [r for r in str(data).split(",") if r.strip()]
    corpus = corpus_name(roots[0]) if len(roots) == 1 else ""
    return {role: [speaker_id(corpus, s) if corpus else s for s in speakers]
            for role, speakers in split.items()}


def seen_speakers(training: dict | None) -> set[str]:
    """Speakers (``corpus/speaker``) a model's card says it trained or validated on."""
    split = card_split(training)
    return {s for role in ("train", "val") for s in split.get(role, [])}


def discover_corpora(roots: str | Path | Sequence[str | Path]) -> list[Utterance]:
    """Read one corpus, or several (a list, or one string of comma-separated folders).

    One corpus keeps its own speaker ids; with several, each speaker becomes
    ``corpus/speaker``.

    Raises:
        DatasetLayoutError: a folder is not a corpus, or two folders share a name.
    """
    if isinstance(roots, (str, Path)):
        roots = [r for r in str(roots).split(",") if r.strip()]
    roots = [Path(r.strip()) if isinstance(r, str) else Path(r) for r in roots]
    if not roots:
        raise DatasetLayoutError("no corpus folder given")
    if len(roots) == 1:
        return discover(roots[0])
    names = [corpus_name(r) for r in roots]
    if len(set(names)) != len(names):
        raise DatasetLayoutError(f"two corpus folders share a name: {names}")
    items: list[Utterance] = []
    for root, name in zip(roots, names, strict=True):
        items.extend(Utterance(u.path, f"{name}/{u.speaker}", u.emotion) for u in discover(root))
    return items


def corpus_of(speaker: str) -> str:
    """``emodb/03`` → ``emodb``; a speaker of a lone corpus → ``""``."""
    return speaker.rsplit("/", 1)[0] if "/" in speaker else ""


def load_audio(path: Path | str, *, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode any file libsndfile reads to mono float32 at ``sample_rate_hz``."""
    return load_mono(path, rate=sample_rate_hz)


def speakers_of(items: Iterable[Utterance]) -> list[str]:
    return sorted({u.speaker for u in items})


def speaker_folds(speakers: Sequence[str], k: int) -> list[list[str]]:
    """Split sorted speakers into ``k`` contiguous folds of near-equal size, corpus by corpus.

    Contiguous blocks keep RAVDESS's alternating male/female actor numbering balanced
    (each fold of four actors holds two of each) and make the folds easy to state. With
    several corpora (``corpus/speaker`` ids) each corpus is split on its own and fold ``i``
    takes block ``i`` of every corpus, so every fold tests on every corpus.
    """
    by_corpus: dict[str, list[str]] = {}
    for s in sorted(set(speakers)):
        by_corpus.setdefault(corpus_of(s), []).append(s)
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    if not by_corpus:
        raise ValueError("no speakers to split into folds")
    for corpus, members in sorted(by_corpus.items(), key=lambda kv: len(kv[1])):
        if len(members) < k:
            where = f"corpus {corpus!r} has" if corpus else "the corpus has"
            fewer = (f"use at most {len(members)} folds (--folds) or" if len(members) >= 2
                     else "cross-validation needs 2; or")
            raise ValueError(
                f"{k} folds hold out speakers of every corpus, and {where} only "
                f"{len(members)} speaker{'s' if len(members) != 1 else ''}: {fewer} "
                "train on every speaker (--fold -1)")
    folds: list[list[str]] = [[] for _ in range(k)]
    for ordered in by_corpus.values():
        for i, block in enumerate(np.array_split(np.array(ordered, dtype=object), k)):
            folds[i].extend(block)
    return [sorted(f) for f in folds]


def filter_labels(
    items: Iterable[Utterance], labels: Sequence[str]
) -> tuple[list[tuple[Utterance, int]], dict[str, int]]:
    """Keep utterances whose emotion maps onto ``labels``; count the skipped ones by emotion."""
    from models.labels import map_to_label_set

    kept: list[tuple[Utterance, int]] = []
    skipped: dict[str, int] = {}
    for u in items:
        mapped = map_to_label_set(u.emotion, tuple(labels))
        if mapped is None:
            skipped[u.emotion] = skipped.get(u.emotion, 0) + 1
        else:
            kept.append((u, labels.index(mapped)))
    return kept, skipped
