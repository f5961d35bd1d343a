"""Torch datasets over decoded utterances: random crops plus augmentation for training,
fixed centre crops for validation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from models.corpora import Utterance, load_audio
from trainer.augment import augment, crop, speed_perturb

log = logging.getLogger(__name__)


def decode_all(items: Sequence[Utterance], *, workers: int = 2) -> list[np.ndarray]:
    """Decode every utterance to 16 kHz mono float32 (kept in memory: RAVDESS is ~200 MB)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda u: load_audio(u.path), items))


class CropDataset(Dataset):
    """One crop of ``window_samples`` per utterance per epoch.

    Args:
        audio: decoded waveforms.
        targets: class index of each waveform.
        window_samples: crop length.
        train: random crops and augmentation when true, centre crops otherwise.
        speed_range: if given, each training crop is speed-perturbed by a factor drawn
            uniformly from it.
        soft_targets: ``(len(audio), classes)`` teacher probabilities; when given, items are
            ``(crop, target, soft target)``.
        seed: base seed; each (epoch, index) pair draws from its own stream.
    """

    def __init__(
        self,
        audio: Sequence[np.ndarray],
        targets: Sequence[int],
        *,
        window_samples: int,
        train: bool,
        seed: int = 0,
        augment_kwargs: dict | None = None,
        speed_range: tuple[float, float] | None = None,
        soft_targets: np.ndarray | None = None,
    ) -> None:
        if len(audio) != len(targets):
            raise ValueError("audio and targets differ in length")
        if soft_targets is not None and len(soft_targets) != len(audio):
            raise ValueError("audio and soft targets differ in length")
        self.audio = list(audio)
        self.targets = list(targets)
        self.window_samples = window_samples
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.augment_kwargs = augment_kwargs or {}
        self.speed_range = speed_range
        self.soft_targets = soft_targets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(
        self, index: int
    ) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            source = self.audio[index]
            if self.speed_range is not None:
                source = speed_perturb(source, float(rng.uniform(*self.speed_range)))
            x = crop(source, self.window_samples, rng)
            x = augment(x, rng, **self.augment_kwargs)
        else:
            x = crop(self.audio[index], self.window_samples, None)
        wave = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.soft_targets is not None:
            return wave, self.targets[index], torch.from_numpy(self.soft_targets[index])
        return wave, self.targets[index]


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get 0)."""
    counts = np.bincount(np.asarray(targets), minlength=num_classes).astype(np.float64)
    weights = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    weights *= (counts > 0).sum() / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)
