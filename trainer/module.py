"""The LightningModule: class-balanced cross-entropy (plus, with a teacher, distillation from
its soft targets), AdamW with separate backbone and head learning rates, linear warm-up then
cosine decay, validation UAR for early stopping."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch import nn

from models.network import EmotionNet
from trainer.distill import distillation_loss
from trainer.metrics import classification_report

log = logging.getLogger("trainer.train")


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, floor: float = 0.02) -> float:
    """Multiplier for the learning rate: 0 → 1 linearly over ``warmup_steps``, then cosine
    down to ``floor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class EmotionModule(L.LightningModule):
    """Trains an :class:`EmotionNet`.

    Args:
        net: the network (passed in, so the module does not decide the architecture).
        labels: class names in output order.
        lr_head: peak learning rate of the pooling head.
        lr_backbone: peak learning rate of the unfrozen backbone layers.
        weight_decay: AdamW weight decay.
        warmup_frac: share of all optimiser steps spent warming up.
        class_weights: per-class loss weights (inverse frequency), or ``None``.
        label_smoothing: cross-entropy label smoothing.
        distill_weight: share of the loss given to a teacher's soft targets, when batches
            carry them (``(waveform, target, soft target)``); the hard label gets the rest.
        distill_temperature: the temperature the soft targets were computed at.
    """

    def __init__(
        self,
        net: EmotionNet,
        *,
        labels: Sequence[str],
        lr_head: float = 1e-3,
        lr_backbone: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_frac: float = 0.1,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.05,
        distill_weight: float = 0.5,
        distill_temperature: float = 2.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.labels = list(labels)
        self.lr_head = lr_head
        self.lr_backbone = lr_backbone
        self.weight_decay = weight_decay
        self.warmup_frac = warmup_frac
        self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError("distill_weight must be in [0, 1]")
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self._val_probs: list[np.ndarray] = []
        self._val_targets: list[np.ndarray] = []
        self.save_hyperparameters(ignore=["net", "class_weights"])

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.net(waveform)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = self.loss(logits.float(), y)
        if len(batch) == 3:
            kd = distillation_loss(logits, batch[2], temperature=self.distill_temperature)
            self.log("train_distill", kd, batch_size=len(y))
            loss = (1 - self.distill_weight) * loss + self.distill_weight * kd
        acc = (logits.argmax(-1) == y).float().mean()
        # Per step (the progress bar, the CSV log) and as the epoch's mean (the epoch line).
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=len(y))
        self.log("train_acc", acc, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x).float()
        self.log("val_loss", self.loss(logits, y), prog_bar=True, batch_size=len(y))
        self._val_probs.append(torch.softmax(logits, -1).cpu().numpy())
        self._val_targets.append(y.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs = np.concatenate(self._val_probs)
        targets = np.concatenate(self._val_targets)
        report = classification_report(targets, probs.argmax(-1), self.labels)
        self.log("val_uar", report["uar"], prog_bar=True)
        self.log("val_acc", report["accuracy"])
        self._val_probs.clear()
        self._val_targets.clear()

    def on_train_epoch_start(self) -> None:
        # Fresh crops and augmentations each epoch, reproducibly.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        set_epoch = getattr(dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.current_epoch)

    def configure_optimizers(self):
        head = [p for p in self.net.head.parameters() if p.requires_grad]
        backbone = [p for p in self.net.backbone.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": self.lr_head}]
        if backbone:
            groups.append({"params": backbone, "lr": self.lr_backbone})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_frac * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps=warmup, total_steps=total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class EpochLog(L.Callback):
    """One INFO line per epoch, progress bar or not (``fold 0 epoch 3/25: train_loss 1.214,
    val_loss 1.102, val_uar 0.612; 58 s``, the training loss averaged over the epoch): a run
    in the background says how far it is and how long an epoch takes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        # The training loss over the whole epoch; its last batch alone is one batch's noise.
        named = {"train_loss": "train_loss_epoch", "val_loss": "val_loss", "val_uar": "val_uar"}
        figures = ", ".join(f"{name} {float(metrics[key]):.3f}"
                            for name, key in named.items() if key in metrics)
        log.info("%s epoch %d/%d: %s; %.0f s", self.name, trainer.current_epoch + 1,
                 trainer.max_epochs, figures or "no metrics", time.perf_counter() - self._started)
