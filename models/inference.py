"""The serving model: ONNX Runtime session + model card, numpy in, numpy out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.card import ModelCard, ModelCardError
from models.ort import is_cuda, make_session
from models.preprocessing import as_batch, fit_length, window_starts

log = logging.getLogger(__name__)

#: Where the shipped default model lives.
DEFAULT_MODEL_DIR = Path(__file__).parent / "weights"
#: Models by name: the shipped default (Whisper tiny: int8 and fp16 ONNX, float16 PyTorch
#: weights) and Whisper base (int8 ONNX only: more accurate, slower; see its card).
SHIPPED_MODELS = {"whisper-tiny": DEFAULT_MODEL_DIR,
                  "whisper-base": DEFAULT_MODEL_DIR / "whisper-base"}


def resolve_model_path(path: Path | str | None) -> Path:
    """``None`` → the default model; a shipped model's name → its folder; else the path."""
    if path is None:
        return DEFAULT_MODEL_DIR
    if str(path) in SHIPPED_MODELS:
        folder = SHIPPED_MODELS[str(path)]
        if not (folder / "model_card.json").is_file():
            raise ModelCardError(f"the shipped model {path!r} is not installed at {folder}")
        return folder
    if not Path(path).exists():
        raise ModelCardError(f"no model {str(path)!r}: it is neither a shipped model "
                             f"({', '.join(SHIPPED_MODELS)}) nor a model folder or .onnx file")
    return Path(path)


PREDICT_BATCH = 32  # windows per run when scoring a long clip


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities → those of logits divided by ``temperature``.

    ``softmax(z / T) = p ** (1 / T) / sum(p ** (1 / T))``, computed in log space so that
    tiny probabilities neither underflow nor divide by zero.
    """
    if temperature == 1.0:
        return probs
    logp = np.log(np.clip(probs, 1e-12, None)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


class WindowScorer:
    """What every backend shares: a card, labels, and scoring clips of any length through
    ``run_windows`` (implemented by the backend)."""

    card: ModelCard
    labels: tuple[str, ...]
    variant: str

    @property
    def sample_rate_hz(self) -> int:
        return self.card.sample_rate_hz

    @property
    def window_samples(self) -> int:
        return self.card.window_samples

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a GPU, where a large batch costs little more than a
        small one (on a CPU the cost grows with the batch)."""
        return False

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_window_parts(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Score several ``(n_i, window_samples)`` arrays as one batch (the inference server's
        coalesced requests); a backend may stage them without joining them first."""
        return self.run_windows(np.concatenate(parts) if len(parts) > 1 else parts[0])

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        x = np.asarray(waveform)
        single = x.ndim == 1
        batch = as_batch(x)
        if batch.shape[1] <= self.window_samples:
            probs = self.run_windows(fit_length(batch, self.window_samples))
        else:
            probs = np.stack([self.predict_windows(row)[1].mean(axis=0) for row in batch])
        return probs[0] if single else probs

    def predict_windows(
        self, audio: np.ndarray, *, hop_s: float = 1.0, batch_size: int = PREDICT_BATCH
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score a long 1-D clip window by window.

        Returns:
            ``(start_s, probs)``: each window's start time and its ``(classes,)`` scores.
        """
        audio = as_batch(audio)[0]
        hop = max(1, int(round(hop_s * self.sample_rate_hz)))
        starts = window_starts(audio.shape[0], self.window_samples, hop)
        windows = np.stack(
            [fit_length(audio[s : s + self.window_samples], self.window_samples) for s in starts]
        )
        probs = np.concatenate(
            [self.run_windows(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        )
        return np.asarray(starts, dtype=np.float64) / self.sample_rate_hz, probs


class EmotionModel(WindowScorer):
    """A loaded emotion model (ONNX Runtime).

    Calling it scores waveforms: ``model(x)`` with ``x`` float32 at ``card.sample_rate_hz``,
    shape ``(samples,)`` → ``(classes,)`` or ``(batch, samples)`` → ``(batch, classes)``.
    Inputs shorter than the window are zero-padded to it; longer ones are scored as the
    mean over windows with a one-second hop. It is a pure function: no I/O, no state.

    Attributes:
        labels: class names of the output columns.
        card: the model card.
        variant: which ONNX file was loaded (``fp32``, ``int8`` or ``fp16``).
    """

    def __init__(self, session, card: ModelCard, *, variant: str) -> None:
        self.session = session
        self.card = card
        self.variant = variant
        self.labels: tuple[str, ...] = card.labels
        self._check_signature()

    @property
    def on_gpu(self) -> bool:
        return "CUDAExecutionProvider" in self.session.get_providers()

    def _check_signature(self) -> None:
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if [i.name for i in inputs] != [self.card.input_name]:
            raise ModelCardError(
                f"model inputs {[i.name for i in inputs]} differ from the card's "
                f"{self.card.input_name!r}"
            )
        if outputs[0].name != self.card.output_name:
            raise ModelCardError(f"model output {outputs[0].name!r} differs from the card's")
        width = outputs[0].shape[-1]
        if isinstance(width, int) and width != len(self.labels):
            raise ModelCardError(
                f"model outputs {width} classes but the card lists {len(self.labels)} labels"
            )

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        """Score a ``(batch, window_samples)`` float32 array exactly as given."""
        (probs,) = self.session.run(
            [self.card.output_name], {self.card.input_name: np.ascontiguousarray(windows)}
        )
        return apply_temperature(probs.astype(np.float32, copy=False), self.card.temperature)


def load_model(
    path: Path | str | None = None,
    device: str = "cpu",
    *,
    variant: str | None = None,
    threads: int = 1,
    verify: bool = True,
) -> EmotionModel:
    """Load the shipped default model, or the model in directory / ONNX file ``path``.

    Args:
        path: a directory holding ``model_card.json`` and its ONNX files, or one ``.onnx``
            file with the card beside it; ``None`` for the default shipped model, or a
            shipped model's name (``whisper-tiny``, ``whisper-base``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        variant: ``fp32``, ``int8`` or ``fp16``; by default fp16 on CUDA and int8 on CPU,
            falling back to whatever the card lists.
        threads: ONNX Runtime intra-op threads.
        verify: check the file's SHA-256 against the card.

    Raises:
        ModelCardError: missing card, unknown variant, digest mismatch, or a model whose
            inputs and outputs disagree with its card.
    """
    target = resolve_model_path(path)
    directory = target.parent if target.suffix == ".onnx" else target
    card = ModelCard.load(directory)
    if target.suffix == ".onnx":
        names = {v: k for k, v in card.files.items()}
        if target.name not in names:
            raise ModelCardError(f"{target.name} is not listed in {directory}/model_card.json")
        variant = names[target.name]
    if variant is None:
        preferred = ["fp16", "fp32", "int8"] if is_cuda(device) else ["int8", "fp32", "fp16"]
        variant = next((v for v in preferred if v in card.files), None)
    if variant not in card.files:
        raise ModelCardError(f"variant {variant!r} not in the card; it lists {sorted(card.files)}")
    onnx_path = directory / card.files[variant]
    if not onnx_path.is_file():
        raise ModelCardError(f"{onnx_path} is missing")
    weights = [directory / f for f in card.external_data.get(onnx_path.name, [])]
    for path in weights:
        if not path.is_file():
            raise ModelCardError(f"{path} is missing: {onnx_path.name} reads its weights from it")
    if verify:
        for path in [onnx_path, *weights]:
            card.check_digest(path)
    session = make_session(onnx_path, device=device, threads=threads)
    log.info("loaded %s (%s) on %s", onnx_path, variant, session.get_providers()[0])
    return EmotionModel(session, card, variant=variant)
