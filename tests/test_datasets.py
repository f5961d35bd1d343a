from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from models.corpora import (
    DatasetLayoutError,
    corpus_of,
    discover,
    discover_corpora,
    filter_labels,
    load_audio,
    parse_crema_name,
    parse_ravdess_name,
    speaker_folds,
    speakers_of,
)
from models.labels import EMOTIONS_5, EMOTIONS_8, map_to_label_set
from trainer.config import TrainConfig
from trainer.train import split_speakers

from .conftest import tone


def test_shared_ravdess_manifest(ravdess_dir: Path) -> None:
    items = discover(ravdess_dir)
    assert len(items) == 1200
    assert {u.speaker for u in items} == {f"{i:02d}" for i in range(1, 21)}
    first = next(u for u in items if u.path.name == "03-01-05-02-01-01-01.flac")
    assert first.emotion == "angry" and first.speaker == "01"
    kept5, skipped5 = filter_labels(items, EMOTIONS_5)
    assert len(kept5) == 880 and skipped5 == {"disgust": 160, "surprised": 160}
    kept8, skipped8 = filter_labels(items, EMOTIONS_8)
    assert len(kept8) == 1200 and skipped8 == {}


def test_ravdess_original_layout_skips_song_and_resamples(ravdess_48k_tree: Path) -> None:
    items = discover(ravdess_48k_tree)
    assert len(items) == 8  # 2 actors x 4 speech files; the song files are not speech
    assert sorted({u.emotion for u in items}) == ["angry", "calm", "disgust", "neutral"]
    audio = load_audio(items[0].path)
    assert audio.dtype.name == "float32" and abs(len(audio) - 16_000) <= 1


def test_crema_layout(crema_tree: Path) -> None:
    items = discover(crema_tree)
    assert len(items) == 18
    assert {u.speaker for u in items} == {"1001", "1002", "1003"}
    kept, skipped = filter_labels(items, EMOTIONS_5)
    assert len(kept) == 15 and skipped == {"disgust": 3}


def test_generic_manifest(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / name, tone(0.3, 8_000), 8_000)
    (tmp_path / "manifest.csv").write_text(
        "path,speaker,emotion\na.wav,s1,Anger\nb.wav,s2,calm\nc.wav,s2,surprise\n"
    )
    items = discover(tmp_path)
    assert [u.emotion for u in items] == ["angry", "calm", "surprised"]
    kept, skipped = filter_labels(items, EMOTIONS_5)
    assert [EMOTIONS_5[t] for _, t in kept] == ["angry", "neutral"]
    assert skipped == {"surprised": 1}


def test_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no manifest.csv"):
        discover(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,label\nx.wav,angry\n")
    with pytest.raises(DatasetLayoutError, match="path,speaker,emotion"):
        discover(tmp_path)
    (tmp_path / "manifest.csv").write_text("path,speaker,emotion\nx.wav,s1,sleepy\n")
    with pytest.raises(ValueError, match="unknown emotion label 'sleepy'"):
        discover(tmp_path)


def test_file_name_parsers() -> None:
    assert parse_ravdess_name("03-01-06-02-02-01-12") == ("12", "fearful", True)
    assert parse_ravdess_name("03-02-06-02-02-01-12") == ("12", "fearful", False)
    assert parse_ravdess_name("03-01-09-02-02-01-12") is None
    assert parse_crema_name("1091_WSI_SAD_XX") == ("1091", "sad")
    assert parse_crema_name("1091_WSI_BOR_XX") is None


def test_label_mapping() -> None:
    assert map_to_label_set("calm", EMOTIONS_5) == "neutral"
    assert map_to_label_set("calm", EMOTIONS_8) == "calm"
    assert map_to_label_set("disgust", EMOTIONS_5) is None


@given(
    speakers=st.sets(st.text(alphabet="abcdef0123456789", min_size=1, max_size=4),
                     min_size=4, max_size=40),
    data=st.data(),
)
def test_speaker_folds_partition(speakers: set[str], data) -> None:
    k = data.draw(st.integers(min_value=2, max_value=len(speakers)))
    folds = speaker_folds(sorted(speakers), k)
    assert len(folds) == k
    flat = [s for f in folds for s in f]
    assert sorted(flat) == sorted(speakers)  # every speaker exactly once
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_train_val_test_speakers_disjoint() -> None:
    speakers = [f"{i:02d}" for i in range(1, 21)]
    seen_test = []
    for fold in range(5):
        split = split_speakers(speakers, TrainConfig(fold=fold))
        train, val, test = (set(split[k]) for k in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(speakers)
        assert len(test) == 4 and len(val) == 2
        seen_test += split["test"]
    assert sorted(seen_test) == speakers  # each actor is tested exactly once across folds
    # RAVDESS numbers actors male (odd) / female (even): each test fold holds both.
    last = split_speakers(speakers, TrainConfig(fold=4))["test"]
    assert last == ["17", "18", "19", "20"]


def test_two_corpora_fold_together(ravdess_dir: Path) -> None:
    """RAVDESS + EmoDB: speakers are named corpus/speaker, and every fold tests (and
    validates on) speakers of both corpora, none of them twice."""
    emodb = ravdess_dir.parent / "emodb"
    if not (emodb / "manifest.csv").is_file():
        pytest.skip(f"{emodb} is not here")
    items = discover_corpora(f"{ravdess_dir},{emodb}")
    speakers = speakers_of(items)
    assert len(speakers) == 25 and "emodb/03" in speakers and "ravdess/03" in speakers
    assert {u.emotion for u in items if u.speaker.startswith("emodb/")} >= {"bored", "angry"}
    kept, skipped = filter_labels([u for u in items if u.speaker.startswith("emodb/")],
                                  ("neutral", "happy", "sad", "angry", "fearful"))
    assert len(kept) == 194 and skipped == {"bored": 37, "disgust": 18}
    tested = []
    for fold in range(5):
        split = split_speakers(speakers, TrainConfig(fold=fold))
        train, val, test = (set(split[k]) for k in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(speakers)
        assert {corpus_of(s) for s in test} == {corpus_of(s) for s in val} == {"ravdess", "emodb"}
        tested += split["test"]
    assert sorted(tested) == speakers
    assert split_speakers(speakers, TrainConfig(fold=-1)) == {"train": speakers, "val": [],
                                                              "test": []}
    with pytest.raises(DatasetLayoutError, match="share a name"):
        discover_corpora([ravdess_dir, ravdess_dir])
