"""A PyTorch inference backend beside ONNX Runtime: same interface, for hosts that have
torch (GPU hosts usually do).

The shipped weights travel as one float16 ``safetensors`` file listed in the card under
the variant ``torch-fp16`` (its SHA-256 checked at load). On CUDA the network runs in
half precision, except the log-mel front end, which stays float32 as in the fp16 ONNX file
(quiet bins and its log floor underflow float16: a quiet caller scored wrong, silence NaN),
through ``torch.compile``, with the batch padded up to a bucket (2, 4, … ``max_batch``); each
bucket's forward pass is captured once, at start-up, as a CUDA graph and replayed, fed from a
pinned host buffer on one stream.
On CPU it runs in float32 (half-precision matmuls are slow there), eagerly. Outputs are the
same probabilities, calibrated by the card's temperature.

torch is imported here only: serving with ONNX Runtime stays torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.card import ModelCard, ModelCardError
from models.inference import WindowScorer, apply_temperature, resolve_model_path

log = logging.getLogger(__name__)

TORCH_VARIANT = "torch-fp16"
TORCH_FILE = "emotion-fp16.safetensors"


def torch_available(cuda: bool = False) -> bool:
    """Whether torch (with a usable CUDA device, if ``cuda``) can be had. Without an NVIDIA
    device node torch is not even imported: a CPU server does not pay its ~170 MB."""
    if cuda and not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() if cuda else True


def _buckets(max_batch: int, *, compiled: bool = False) -> list[int]:
    """Batch sizes a batch is padded up to: 1, 2, 4, … ``max_batch``. Compiled with a
    dynamic batch size, 1 is still a size of its own (a second compilation): a lone window
    is scored in a batch of two instead."""
    out, b = [], 2 if compiled and max_batch > 1 else 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


class TorchEmotionModel(WindowScorer):
    """An emotion model running in PyTorch (see the module docstring).

    Args:
        net: the network (an ``EmotionNet``) with its weights loaded.
        card: the model card.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        max_batch: the largest batch scored in one pass (larger inputs are split).
        cuda_graphs: capture each batch bucket as a CUDA graph (CUDA only).
        half: run in float16 (default: on CUDA only; on a CPU, float16 is slow and only
            for checking the half-precision path).
        compile: run the network through ``torch.compile`` (Inductor's fused kernels; one
            compilation for every batch size, then each bucket's CUDA graph over it). On an
            H100 it took batch 1024 from 24 500 to 30 200 windows/s; compiling and capturing
            every bucket took 55 s at start-up (:meth:`warmup`). Should compiling fail, the
            model runs uncompiled.
    """

    def __init__(self, net, card: ModelCard, *, device: str = "cpu", max_batch: int = 256,
                 cuda_graphs: bool = True, half: bool | None = None,
                 compile: bool = False) -> None:
        import torch

        self.card = card
        self.labels: tuple[str, ...] = card.labels
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        half = self.cuda if half is None else half
        self.dtype = torch.float16 if half else torch.float32
        self.variant = "torch-fp16" if half else "torch-fp32"
        self.net = net.to(self.device, self.dtype).eval()
        frontend = getattr(self.net.backbone, "frontend", None)
        if frontend is not None:
            frontend.float()
        # What the network takes: float32 where the backbone casts after its front end.
        self._input_dtype = torch.float32 if frontend is not None else self.dtype
        self.max_batch = max_batch
        self.compiled = compile
        self.buckets = _buckets(max_batch, compiled=compile)
        self._net_call = torch.compile(self.net, dynamic=True) if compile else self.net
        self.use_graphs = cuda_graphs and self.cuda
        self._graphs: dict[int, tuple] = {}
        # Where batches are staged: pinned on CUDA (asynchronous copies to the device).
        self._host = torch.empty((max_batch, card.window_samples), dtype=torch.float32,
                                 pin_memory=self.cuda)
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None

    @property
    def on_gpu(self) -> bool:
        return self.cuda

    def _forward(self, x):
        import torch

        with torch.inference_mode():
            return torch.softmax(self._net_call(x.to(self._input_dtype)).float(), dim=-1)

    def warmup(self) -> float:
        """Compile and capture every bucket now, not on the first calls; seconds taken."""
        import time

        import torch

        started = time.perf_counter()
        self._host.zero_()
        try:
            self._forward(torch.zeros((self.buckets[0], self.card.window_samples),
                                      device=self.device))
        except Exception as exc:  # Inductor or Triton missing or failing: run uncompiled
            if not self.compiled:
                raise
            log.warning("torch.compile failed (%s: %s); running uncompiled", type(exc).__name__,
                        str(exc)[:300])
            self.compiled, self._net_call = False, self.net
            self.buckets = _buckets(self.max_batch)
        if self.use_graphs:
            for bucket in self.buckets:
                self._run_staged(bucket)
        return time.perf_counter() - started

    def _graph(self, bucket: int):
        """The captured graph of one bucket: (graph, static input, static output)."""
        import torch

        if bucket not in self._graphs:
            static_in = torch.zeros((bucket, self.card.window_samples), device=self.device)
            static_in[:, ::7] = 0.01
            with torch.cuda.stream(self._stream):  # type: ignore[arg-type]
                for _ in range(2):  # warm-up on the side stream, as capture requires
                    self._forward(static_in)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    static_out = self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(self._stream)  # type: ignore[arg-type]
            self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        """Score a ``(batch, window_samples)`` float32 array exactly as given."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.shape[0] > self.max_batch:
            return np.concatenate([self.run_windows(x[i : i + self.max_batch])
                                   for i in range(0, x.shape[0], self.max_batch)])
        n = x.shape[0]
        if not self.cuda:
            import torch

            probs = self._forward(torch.from_numpy(x)).numpy()
        else:
            probs = self._run_cuda(x)
        return apply_temperature(probs[:n].astype(np.float32, copy=False), self.card.temperature)

    def run_window_parts(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Each part is copied straight into the staging buffer (pinned, on CUDA): joining
        256 windows first (49 MB, freshly allocated) cost the batching thread ~20 ms per batch
        on a CPU, serially with the GPU's work."""
        n = sum(len(p) for p in parts)
        if len(parts) == 1 or n > self.max_batch:
            return super().run_window_parts(parts)
        import torch

        host = self._host
        start = 0
        for part in parts:
            host[start : start + len(part)].copy_(torch.from_numpy(
                np.ascontiguousarray(part, dtype=np.float32)))
            start += len(part)
        probs = self._run_staged(n)
        return apply_temperature(probs[:n].astype(np.float32, copy=False), self.card.temperature)

    def _run_cuda(self, x: np.ndarray) -> np.ndarray:
        import torch

        self._host[: x.shape[0]].copy_(torch.from_numpy(x))
        return self._run_staged(x.shape[0])

    def _run_staged(self, n: int) -> np.ndarray:
        """Score the first ``n`` rows of the staging buffer."""
        if not self.cuda:
            return self._forward(self._host[:n]).numpy()
        bucket = next(b for b in self.buckets if b >= n)
        host = self._host[:bucket]
        host[n:].zero_()
        if self.use_graphs:
            try:
                graph, static_in, static_out = self._graph(bucket)
            except RuntimeError as exc:  # capture unsupported here: eager from now on
                log.warning("CUDA graph capture failed (%s); running eagerly", exc)
                self.use_graphs = False
            else:
                static_in.copy_(host, non_blocking=True)
                graph.replay()
                return static_out.cpu().numpy()
        out = self._forward(host.to(self.device, non_blocking=True))
        return out.cpu().numpy()


def load_torch_model(path: Path | str | None = None, device: str = "cpu", *,
                     verify: bool = True, threads: int = 1, max_batch: int = 256,
                     cuda_graphs: bool = True, compile: bool | None = None,
                     warmup: bool | None = None) -> TorchEmotionModel:
    """Load the card's ``torch-fp16`` weights into the network its backbone names.

    ``compile`` (``torch.compile``) and ``warmup`` (compile and capture every batch bucket
    before returning) default to on for CUDA, off on a CPU.

    Raises:
        ModelCardError: the card lists no PyTorch weights, the file is missing or its
            digest differs, or the backbone cannot be rebuilt without a hub.
        RuntimeError: torch is not installed (install callmon[train] or a CUDA build).
    """
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError as exc:
        raise RuntimeError("the torch backend needs PyTorch and safetensors (callmon[train], "
                           "or the host's CUDA build of torch)") from exc
    from models.backbones import RANDOM_TWINS, build_backbone, random_twin, rebuildable
    from models.network import EmotionNet

    directory = resolve_model_path(path)
    card = ModelCard.load(directory)
    if TORCH_VARIANT not in card.files:
        raise ModelCardError(f"{directory} has no PyTorch weights ({TORCH_VARIANT}); it lists "
                             f"{sorted(card.files)}: use the onnx backend")
    weights = directory / card.files[TORCH_VARIANT]
    if not weights.is_file():
        raise ModelCardError(f"{weights} is missing")
    if verify:
        card.check_digest(weights)
    if not rebuildable(card.backbone):
        raise ModelCardError(f"the torch backend rebuilds {sorted(RANDOM_TWINS)}, not "
                             f"{card.backbone!r}: use the onnx backend")
    if device.startswith("cuda") and not torch_available(cuda=True):
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device (is "
                           "the driver there? in a container: docker run --gpus all); or "
                           "serve on the CPU with --device cpu")
    if not device.startswith("cuda"):
        torch.set_num_threads(max(1, threads))
    net = EmotionNet(build_backbone(random_twin(card.backbone)), num_classes=len(card.labels))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith((".dft", ".mel"))]:
        raise ModelCardError(f"{weights} does not fit {card.backbone}: missing {missing}, "
                             f"unexpected {unexpected}")
    cuda = device.startswith("cuda")
    compile = cuda if compile is None else compile
    warmup = cuda if warmup is None else warmup
    model = TorchEmotionModel(net, card, device=device, max_batch=max_batch,
                              cuda_graphs=cuda_graphs, compile=compile)
    log.info("loaded %s (%s) on %s", weights, model.variant, model.device)
    if warmup:
        seconds = model.warmup()
        log.info("warmed up in %.1f s: %s, batch buckets %s", seconds,
                 "compiled" if model.compiled else "not compiled", model.buckets)
    return model


def save_torch_weights(net, path: Path) -> Path:
    """The network's weights as one float16 safetensors file (the export side)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return path
