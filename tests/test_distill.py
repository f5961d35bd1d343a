"""Distillation from a teacher: the loss, the teacher's clip targets, the guard against a
teacher that heard the student's test speakers, and a real training run with a teacher."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.bench import save_random_wav2vec2
from trainer.config import TrainConfig
from trainer.data import CropDataset
from trainer.distill import (
    TeacherError,
    check_teacher_split,
    distillation_loss,
    soft_targets,
    teacher_path,
)
from trainer.train import load_checkpoint, train

LABELS = ("neutral", "happy", "sad", "angry", "fearful")


def test_the_loss_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    teacher_logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3], [-1.0, 0.0, 3.0, 0.2, 0.1]])
    teacher = torch.softmax(teacher_logits / 2.0, -1)
    assert distillation_loss(teacher_logits, teacher, temperature=2.0).item() == pytest.approx(
        0.0, abs=1e-6)
    student = torch.zeros_like(teacher_logits, requires_grad=True)
    before = distillation_loss(student, teacher, temperature=2.0)
    assert before.item() > 0.1
    before.backward()
    assert student.grad is not None
    stepped = (student - 1.0 * student.grad).detach()
    assert distillation_loss(stepped, teacher, temperature=2.0).item() < before.item()


class _LoudnessNet(torch.nn.Module):
    """Logits from each window's level: a teacher whose answer depends on the window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.abs().mean(dim=1, keepdim=True) * 10
        return torch.cat([level * k for k in range(5)], dim=1)


def test_soft_targets_average_each_clips_tempered_windows() -> None:
    quiet = np.full(3 * 16_000, 0.1, dtype=np.float32)
    loud_then_quiet = np.concatenate([np.full(16_000, 0.5, np.float32), quiet])
    targets = soft_targets(_LoudnessNet(), [quiet, loud_then_quiet], temperature=2.0,
                           window_samples=3 * 16_000, hop_samples=16_000)
    assert targets.shape == (2, 5) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    windows = torch.from_numpy(np.stack([loud_then_quiet[:48_000], loud_then_quiet[16_000:]]))
    expected = torch.softmax(_LoudnessNet()(windows) / 2.0, -1).mean(0).numpy()
    np.testing.assert_allclose(targets[1], expected, rtol=1e-5)
    expected_quiet = torch.softmax(_LoudnessNet()(torch.from_numpy(quiet[None])) / 2.0, -1)
    np.testing.assert_allclose(targets[0], expected_quiet[0].numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(_LoudnessNet(), [quiet], temperature=0.0, window_samples=48_000,
                     hop_samples=16_000)


def test_a_teacher_is_checked_against_the_students_split() -> None:
    both, ravdess = "../shared/data/ravdess,../shared/data/emodb", "/elsewhere/RAVDESS"
    split = {"train": ["ravdess/03"], "val": ["ravdess/02"], "test": ["ravdess/01", "emodb/03"]}

    def check(teacher_train, student_split=split, teacher_data=both, data=both,
              teacher_labels=LABELS):
        check_teacher_split({"train": teacher_train, "val": [], "test": []}, student_split,
                            teacher_data=teacher_data, data=data,
                            teacher_labels=teacher_labels, labels=LABELS)

    check(["ravdess/03", "ravdess/04", "emodb/08"])
    with pytest.raises(TeacherError, match="ravdess/01"):
        check(["ravdess/01", "ravdess/03"])
    with pytest.raises(TeacherError, match="ravdess/02"):
        check(["ravdess/02"])
    with pytest.raises(TeacherError, match="classes"):
        check([], teacher_labels=LABELS[:4])
    # A run over one corpus names speakers without the corpus: compared by corpus all the same.
    lone = {"train": ["03"], "val": ["02"], "test": ["01"]}
    with pytest.raises(TeacherError, match="ravdess/01"):
        check(["ravdess/01"], student_split=lone, data=ravdess)
    check(["emodb/01", "emodb/02"], student_split=lone, data=ravdess)
    with pytest.raises(TeacherError, match="ravdess/01"):
        check(["01", "03"], teacher_data=ravdess)
    assert teacher_path("runs/base-f{fold}/model.pt", 3) == Path("runs/base-f3/model.pt")
    assert teacher_path("runs/base-f{fold}/model.pt", -1) == Path("runs/base-fall/model.pt")


def test_the_dataset_hands_out_each_clips_soft_target() -> None:
    audio = [np.zeros(20_000, np.float32), np.ones(50_000, np.float32)]
    soft = np.array([[1, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0]], dtype=np.float32)
    ds = CropDataset(audio, [0, 2], window_samples=16_000, train=True, soft_targets=soft)
    wave, target, soft_target = ds[1]
    assert wave.shape == (16_000,) and target == 2
    np.testing.assert_array_equal(soft_target.numpy(), soft[1])
    with pytest.raises(ValueError, match="soft targets"):
        CropDataset(audio, [0, 2], window_samples=16_000, train=True, soft_targets=soft[:1])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, ravdess_dir: Path) -> tuple[TrainConfig, dict]:
    """A real (fast_dev_run) training run on RAVDESS clips, fold 4, to serve as teacher."""
    tmp = tmp_path_factory.mktemp("teacher")
    w2v = save_random_wav2vec2(tmp / "w2v", base=False)
    cfg = TrainConfig(data=str(ravdess_dir), out=str(tmp / "teacher"), backbone=f"wav2vec2:{w2v}",
                      fast_dev_run=True, limit_items=120, batch_size=4, progress=False,
                      precision="32", fold=4)
    return cfg, train(cfg)


def test_a_student_trains_on_its_folds_teacher(teacher_run, tmp_path: Path) -> None:
    cfg, teacher = teacher_run
    pattern = teacher["checkpoint"].replace("teacher/model.pt", "teach{fold}/model.pt")
    Path(pattern.format(fold=4)).parent.mkdir()
    Path(pattern.format(fold=4)).symlink_to(teacher["checkpoint"])
    student = replace(cfg, out=str(tmp_path / "student"), distill_from=pattern,
                      distill_weight=0.7, distill_temperature=3.0)
    metrics = train(student)
    assert metrics["teacher"]["checkpoint"] == pattern.format(fold=4)
    assert "targets" not in metrics["teacher"] and metrics["test"]["n"] > 0
    _, loaded, _ = load_checkpoint(metrics["checkpoint"])
    assert (loaded.distill_from, loaded.distill_weight, loaded.distill_temperature) == (
        pattern, 0.7, 3.0)


def test_a_teacher_that_trained_on_the_test_speakers_is_refused(teacher_run,
                                                                 tmp_path: Path) -> None:
    cfg, teacher = teacher_run
    student = replace(cfg, out=str(tmp_path / "student"), fold=0,
                      distill_from=teacher["checkpoint"])
    with pytest.raises(TeacherError, match="the teacher trained on ravdess/0"):
        train(student)
    assert not (tmp_path / "student" / "model.pt").exists()
    missing = replace(student, fold=4, distill_from=str(tmp_path / "nowhere.pt"))
    with pytest.raises(FileNotFoundError, match="teacher checkpoint"):
        train(missing)


def test_the_cards_train_command_names_the_teacher() -> None:
    from dataclasses import asdict

    from models.card_markdown import train_command

    cfg = asdict(TrainConfig(distill_from="runs/base-{fold}/model.pt", distill_weight=0.5,
                             distill_temperature=2.0, fold=-1))
    command = train_command(cfg)
    assert "--distill-from 'runs/base-{fold}/model.pt' --distill-weight 0.5" in command
    assert "--distill-temperature 2.0" in command and "--fold -1" in command
    assert "--distill" not in train_command(asdict(TrainConfig()))
