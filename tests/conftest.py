"""Shared fixtures: the shared RAVDESS folder, and small corpora written in each layout."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def _ravdess_dir() -> Path:
    env = os.environ.get("CALLMON_RAVDESS")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "ravdess"


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    path = _ravdess_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"RAVDESS not found at {path}: set CALLMON_RAVDESS to the shared folder")
    return path


@pytest.fixture(scope="session")
def ravdess_rows(ravdess_dir: Path) -> list[dict]:
    with open(ravdess_dir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def tone(seconds: float, rate: int, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def ravdess_48k_tree(tmp_path: Path) -> Path:
    """The original RAVDESS distribution layout: Actor_XX/*.wav at 48 kHz, speech and song."""
    root = tmp_path / "ravdess48"
    for actor in ("01", "02"):
        folder = root / f"Actor_{actor}"
        folder.mkdir(parents=True)
        for emotion in ("01", "02", "05", "07"):
            sf.write(folder / f"03-01-{emotion}-01-01-01-{actor}.wav", tone(1.0, 48_000), 48_000)
        sf.write(folder / f"03-02-05-01-01-01-{actor}.wav", tone(1.0, 48_000), 48_000)  # song
    return root


@pytest.fixture
def crema_tree(tmp_path: Path) -> Path:
    """CREMA-D's layout: AudioWAV/1001_DFA_ANG_XX.wav, 16 kHz."""
    root = tmp_path / "crema"
    (root / "AudioWAV").mkdir(parents=True)
    for speaker in ("1001", "1002", "1003"):
        for code in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
            sf.write(root / "AudioWAV" / f"{speaker}_DFA_{code}_XX.wav", tone(0.5, 16_000), 16_000)
    return root


@pytest.fixture(scope="session")
def shipped_model():
    from models import load_model

    return load_model(threads=2)


@pytest.fixture(scope="session")
def call_actors(shipped_model) -> list[str]:
    """Four RAVDESS actors whose clips the streaming tests build calls from: those the
    shipped model's card lists as held out if it has them; for a model trained on every
    speaker (the shipped one is: its estimate is the cross-validation's), actors 17-20, and
    then these tests check the plumbing, not how the model does on unseen voices
    (``callmon calibrate`` and ``callmon bench alerts`` measure that)."""
    held = [s.split("/")[-1] for s in shipped_model.card.evaluation.get("held_out_speakers", [])
            if s.startswith("ravdess/") or s.isdigit()]
    return held if len(held) >= 4 else ["17", "18", "19", "20"]


@pytest.fixture
def redis_server(tmp_path):
    from streamer.tools.redis_server import EmbeddedRedis

    server = EmbeddedRedis(data_dir=tmp_path / "redis", fsync_always=True)
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    server.close()
