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
    (tmp_path / "manifest.csv").write_text("path,speaker,emotion\n")
    with pytest.raises(DatasetLayoutError, match="its manifest.csv lists no clips"):
        discover(tmp_path)


def test_too_few_speakers_for_the_folds_says_which_corpus() -> None:
    both = [f"ravdess/{i:02d}" for i in range(1, 21)] + ["emodb/03", "emodb/08", "emodb/09"]
    with pytest.raises(ValueError, match="corpus 'emodb' has only 3 speakers: use at most 3 "
                                         r"folds \(--folds\) or train on every speaker"):
        speaker_folds(both, 5)
    with pytest.raises(ValueError, match="the corpus has only 1 speaker: cross-validation needs 2"):
        speaker_folds(["01"], 5)
    with pytest.raises(ValueError, match="at least 2 folds, got 1"):
        speaker_folds(both, 1)
    with pytest.raises(ValueError, match="no speakers"):
        speaker_folds([], 2)
    assert len(speaker_folds(both, 3)) == 3


@pytest.mark.parametrize(("fields", "message"), [
    ({"epochs": 0}, "epochs, batch size and accumulation steps must each be at least 1"),
    ({"batch_size": 0}, "at least 1"),
    ({"folds": 1}, "at least 2 folds, got 1"),
    ({"fold": 5}, r"fold must be in 0..4, or -1 to train on every speaker; got 5"),
    ({"fold": -2}, "fold must be in 0..4"),
    ({"backbone": "whisper-huge"}, "unknown backbone 'whisper-huge'"),
    ({"backbone": "wav2vec2:"}, "unknown backbone 'wav2vec2:'"),
    ({"backbone": "whisper-base:9"}, "how many of whisper-base's 6 layers"),
    ({"labels": "7"}, "labels must be one of"),
    ({"select": "best"}, "select must be 'last' or 'best_val'"),
    ({"speed_min": 1.2}, "0 < speed_min <= speed_max, got 1.2 and 1.1"),
    ({"p_noise": 1.5}, r"p_noise must be in \[0, 1\]"),
])
def test_a_recipe_that_cannot_train_is_refused_before_any_audio_is_read(
        fields: dict, message: str) -> None:
    """``callmon train`` decodes every clip before it builds the network: a bad flag found
    only then cost half a minute and, for an unknown backbone, came after the audio."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)
    TrainConfig(fold=-1, backbone="whisper-base:4", select="best_val")  # fine as given


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
