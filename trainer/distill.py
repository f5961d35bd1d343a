"""Knowledge distillation: a teacher network's softened clip probabilities as extra training
targets for a smaller student (Hinton et al., 2015, "Distilling the knowledge in a neural
network").

The teacher's targets are computed once per training clip, on the clean clip, averaged over
its windows as the evaluation does; the student sees them beside the hard label under every
augmentation (telephone, noise, speed, crops), so it also learns to give a degraded clip the
teacher's answer for the clean one. A teacher must not have trained on any speaker the
student is validated or tested on, or the student's figures would no longer be
speaker-independent: :func:`check_teacher_split` refuses such a teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.corpora import corpus_name
from trainer.evaluate import predict_clip_probs, torch_predict


class TeacherError(ValueError):
    """The teacher cannot be used for this run."""


def teacher_path(pattern: str, fold: int) -> Path:
    """``pattern`` with ``{fold}`` replaced by the run's fold (``all`` for -1)."""
    return Path(pattern.replace("{fold}", "all" if fold < 0 else str(fold)))


def qualified(speakers: Sequence[str], data: str) -> set[str]:
    """Speaker ids as ``corpus/speaker`` whatever the run read: a run over one corpus keeps
    bare ids, so a teacher and a student that read different corpora still compare."""
    roots = [r.strip() for r in data.split(",") if r.strip()]
    if len(roots) == 1:
        return {f"{corpus_name(roots[0])}/{s}" for s in speakers}
    return set(speakers)


def check_teacher_split(teacher_split: dict[str, list[str]], split: dict[str, list[str]],
                        *, teacher_data: str, data: str, teacher_labels: Sequence[str],
                        labels: Sequence[str]) -> None:
    """Refuse a teacher whose training speakers include a speaker the student validates or
    tests on, or whose classes differ from the student's. ``teacher_data`` and ``data`` are
    the corpus folders each run read (``TrainConfig.data``)."""
    if list(teacher_labels) != list(labels):
        raise TeacherError(f"teacher classes {list(teacher_labels)} differ from {list(labels)}")
    leaked = sorted(qualified(teacher_split["train"], teacher_data)
                    & qualified(split["val"] + split["test"], data))
    if leaked:
        raise TeacherError(
            f"the teacher trained on {', '.join(leaked)}, whom this run validates or tests on; "
            "use the teacher of the same fold")


def soft_targets(net: torch.nn.Module, clips: Sequence[np.ndarray], *, temperature: float,
                 window_samples: int, hop_samples: int, batch_size: int = 16) -> np.ndarray:
    """``(clips, classes)`` float32: the teacher's window probabilities at ``temperature``,
    averaged over each clip's windows."""
    if temperature <= 0:
        raise ValueError("the distillation temperature must be positive")
    predict = torch_predict(net.float().eval(), temperature=temperature)
    probs = predict_clip_probs(predict, clips, window_samples=window_samples,
                               hop_samples=hop_samples, batch_size=batch_size)
    return probs.astype(np.float32)


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, *,
                      temperature: float) -> torch.Tensor:
    """``T² · KL(teacher ‖ student)`` at temperature ``T``, averaged over the batch (the
    ``T²`` keeps its gradients on the scale of the hard-label loss)."""
    log_student = torch.log_softmax(logits.float() / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(log_student, teacher_probs.float(), reduction="batchmean")
    return kl * temperature**2
