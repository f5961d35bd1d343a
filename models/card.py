"""The model card: what travels with the weights and is checked when they are loaded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CARD_FILE = "model_card.json"
CARD_SCHEMA_VERSION = 1


def sha256_of(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (weight files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


#: Training config fields that say how or where a run went, not what it trained (numeric
#: precision included: float32 and mixed precision train the same recipe, docs/results
#: fold0_fp32.json and the GPU figures in the card say how closely).
RUN_ONLY = frozenset({"fold", "out", "threads", "progress", "accelerator", "precision",
                      "fast_dev_run"})


def recipe_differences(a: dict, b: dict, *, also_ignore: frozenset[str] = frozenset()
                       ) -> list[str]:
    """The fields in which two training configs (a card's ``training.config``, a run's
    ``metrics.json`` config) train differently. How a run went (:data:`RUN_ONLY`) and fields
    one of them predates are not compared; corpora are compared by folder name, as a path
    relative to elsewhere names the same corpus."""
    def value(key: str, config: dict):
        v = config[key]
        return [Path(p).name for p in str(v).split(",")] if key == "data" else v

    return sorted(k for k in a.keys() & b.keys()
                  if k not in RUN_ONLY | also_ignore and value(k, a) != value(k, b))


class ModelCardError(ValueError):
    """The card is missing, malformed, or disagrees with the weights."""


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Facts about one trained model.

    Attributes:
        labels: class names in the order of the model's output.
        sample_rate_hz: the rate the model's input waveform must have.
        window_s: the window length the model was trained on (the longest it accepts).
        files: ONNX variant name (``fp32``, ``int8``, ``fp16``) → file name beside the card.
        sha256: file name → SHA-256, checked at load.
        external_data: ONNX file name → the files it reads its weights from (the float16
            ONNX model reads them from the PyTorch backend's safetensors file); checked at
            load with the ONNX file.
        calibration: ``{"temperature": T}`` fitted on validation speakers; serving divides
            the model's logits by ``T`` (applied to its probabilities as ``p ** (1 / T)``,
            renormalised).
        alerts: alert thresholds chosen on validation calls for a target false-alert rate
            (``smoothing``, and ``on``/``off``/``consecutive`` per kind); the server uses
            them unless its settings override them.
    """

    name: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    window_s: float
    backbone: str
    files: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)
    external_data: dict[str, list[str]] = field(default_factory=dict)
    input_name: str = "waveform"
    output_name: str = "probabilities"
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    alerts: dict = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate_hz))

    def to_json(self) -> str:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return json.dumps(data, indent=2) + "\n"

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CARD_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        path = Path(directory) / CARD_FILE
        if not path.is_file():
            raise ModelCardError(f"no {CARD_FILE} beside the model in {directory}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "model card") -> ModelCard:
        """A card from its JSON fields (as written by :meth:`to_json`), validated."""
        path = where
        if data.get("schema_version") != CARD_SCHEMA_VERSION:
            raise ModelCardError(
                f"{path}: schema_version {data.get('schema_version')!r}, "
                f"this callmon reads {CARD_SCHEMA_VERSION}"
            )
        required = {"name", "labels", "sample_rate_hz", "window_s", "backbone", "files"}
        missing = required - data.keys()
        if missing:
            raise ModelCardError(f"{path} lacks {sorted(missing)}")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        fields["labels"] = tuple(fields["labels"])
        card = cls(**fields)
        if not card.labels or len(set(card.labels)) != len(card.labels):
            raise ModelCardError(f"{path}: labels must be unique and non-empty")
        if card.sample_rate_hz <= 0 or card.window_s <= 0:
            raise ModelCardError(f"{path}: sample_rate_hz and window_s must be positive")
        temperature = card.calibration.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or not 0.05 <= temperature <= 20:
            raise ModelCardError(f"{path}: calibration temperature {temperature!r} is not in "
                                 "[0.05, 20]")
        return card

    def check_digest(self, path: Path) -> None:
        """Raise :class:`ModelCardError` when ``path`` differs from the SHA-256 the card
        lists for it (files the card lists no digest for pass)."""
        expected = self.sha256.get(path.name)
        if expected is not None and sha256_of(path) != expected:
            raise ModelCardError(f"{path} does not match the SHA-256 in its model card: the file "
                                 "is corrupt or was replaced")

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))


def percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def alert_rows(block: dict) -> list[str]:
    """Markdown rows: an alert benchmark's overall figures per channel (the card and
    ``callmon calibrate`` both show them); with a column for calls upset from the first
    word when the benchmark had them."""
    rows = {ch: b for ch, b in block.items()
            if isinstance(b, dict) and "false_alerts_per_hour" in b}
    from_start = any((b.get("angry_from_start") or {}).get("calls") for b in rows.values())
    lines = ["| calls | frustration false alerts / h | distress false alerts / h | angry ≤ 10 s "
             "| sad ≤ 15 s | fearful ≤ 15 s | median s to alert (angry / sad / fearful) |"
             + (" upset from the first word: angry / sad / fearful in time |" if from_start
                else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if from_start else "")]
    for channel, b in rows.items():
        fa = b["false_alerts_per_hour"]

        def det(e: str, b: dict = b) -> str:
            t = b[e]
            return (f"{t['detected_within_deadline']}/{t['calls']} "
                    f"({percent(t['detection_rate'] or 0.0)})")

        med = " / ".join("–" if b[e]["median_time_to_alert_s"] is None
                         else f"{b[e]['median_time_to_alert_s']:g}"
                         for e in ("angry", "sad", "fearful"))
        start = ""
        if from_start:
            start = " " + " / ".join(f"{b[k]['detected_within_deadline']}/{b[k]['calls']}"
                               if b.get(k) else "–"
                               for k in ("angry_from_start", "sad_from_start",
                                         "fearful_from_start")) + " |"
        lines.append(f"| {channel} ({b['calm_hours']:.2f} h calm) | {fa['frustration']} | "
                     f"{fa['distress']} | {det('angry')} | {det('sad')} | {det('fearful')} | "
                     f"{med} |{start}")
    return lines


def ceiling_lines(ceil: dict, target: float) -> list[str]:
    """One line per channel: the ceiling of the rule search on the test calls."""
    out = []
    for ch, kinds in ceil.items():
        parts = [f"{kind} {c['detected_within_deadline']}/{c['targets']} targets alerted in time "
                 f"at {c['false_alerts_per_hour']:g} false alerts/h"
                 for kind, c in kinds.items()]
        out.append(f"- {ch}: " + "; ".join(parts))
    return [f"Ceiling — the best any single rule of the search reaches on the test calls "
            f"within {target:g} false alert/h per kind, chosen on those very calls (not an "
            "estimate: a bound no way of choosing rules can beat with this classifier):", "",
            *out]
