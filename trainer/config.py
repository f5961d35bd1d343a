"""The training recipe as one frozen dataclass (importing it costs no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.audio import MODEL_RATE_HZ as SAMPLE_RATE_HZ
from models.labels import LABEL_SETS
from models.whisper_sizes import check_backbone


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides a training run. Defaults are the shipped model's recipe."""

    data: str = "../shared/data/ravdess,../shared/data/emodb"
    out: str = "runs/default"
    labels: str = "5"  # "5" (product) or "8" (RAVDESS, for comparison)
    backbone: str = "whisper-tiny"
    freeze_layers: int = 0  # lowest transformer layers kept frozen (the conv stem always is)
    window_s: float = 3.0
    eval_hop_s: float = 1.0
    epochs: int = 25
    batch_size: int = 16
    accumulate: int = 1
    lr_head: float = 1e-3
    lr_backbone: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    label_smoothing: float = 0.05
    patience: int = 6  # early stopping on validation UAR; ignored with select="last"
    select: str = "last"  # which checkpoint to keep: "last" or "best_val" (early stopping)
    p_telephone: float = 0.5
    p_noise: float = 0.5
    speed_min: float = 0.9  # speed perturbation range; 1.0/1.0 turns it off
    speed_max: float = 1.1
    spec_augment: bool = False  # mask log-mel bands and stretches while training (Whisper)
    distill_from: str = ""  # teacher model.pt ("{fold}" → the run's fold, "all" for -1)
    distill_weight: float = 0.5  # share of the loss given to the teacher's soft targets
    distill_temperature: float = 2.0
    folds: int = 5
    fold: int = 4  # which fold is the test fold; -1: none, every speaker trains (as shipped)
    val_speakers: int = 2  # taken from the training speakers for early stopping
    seed: int = 1234
    precision: str = "auto"  # auto: 16-mixed on CUDA; on CPU bf16-mixed if native, else 32-true
    accelerator: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    fast_dev_run: bool = False
    limit_items: int = 0  # keep only this many utterances (smoke tests)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a recipe that cannot train, before any audio is decoded."""
        if self.labels not in LABEL_SETS:
            raise ValueError(f"labels must be one of {sorted(LABEL_SETS)}, got {self.labels!r}")
        check_backbone(self.backbone)
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("epochs, batch size and accumulation steps must each be at least 1 "
                             f"(got {self.epochs}, {self.batch_size}, {self.accumulate})")
        if self.folds < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {self.folds}")
        if not -1 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}, or -1 to train on every "
                             f"speaker; got {self.fold}")
        if self.select not in ("last", "best_val"):
            raise ValueError(f"select must be 'last' or 'best_val', got {self.select!r}")
        if not 0 < self.speed_min <= self.speed_max:
            raise ValueError("speed perturbation needs 0 < speed_min <= speed_max, got "
                             f"{self.speed_min} and {self.speed_max}")
        for name in ("p_telephone", "p_noise", "warmup_frac", "distill_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * SAMPLE_RATE_HZ))

    @property
    def eval_hop_samples(self) -> int:
        return int(round(self.eval_hop_s * SAMPLE_RATE_HZ))

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_SETS[self.labels]
