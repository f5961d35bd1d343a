"""``callmon export``: a trained checkpoint → ONNX fp32, int8 (MatMul/Gemm only) and fp16,
with the model card, digests and measured PyTorch↔ONNX parity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from models.card import ModelCard, sha256_of
from models.card_markdown import calibration_fields
from models.network import EmotionNet, ProbabilityModel
from models.torch_backend import TORCH_FILE, TORCH_VARIANT, save_torch_weights
from trainer.evaluate import torch_predict

log = logging.getLogger(__name__)

OPSET = 18
VARIANTS = ("fp32", "int8", "fp16")


def export_fp32(net: EmotionNet, path: Path, *, window_samples: int) -> Path:
    """Export with dynamic batch and length axes; input ``waveform``, output ``probabilities``."""
    model = ProbabilityModel(net.float().eval())
    dummy = torch.zeros(2, window_samples)
    dummy[:, ::7] = 0.01  # non-silent, so no branch is traced on an all-zero clip
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["waveform"],
        output_names=["probabilities"],
        dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "probabilities": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return path


INT8_SCOPES = ("ffn", "linear")


def resolve_int8_scope(scope: str, backbone: str) -> str:
    """``auto``: as each shipped model was exported, every linear layer for Whisper base
    (its int8 file ships at 25 MB; the feed-forward layers alone leave it larger) and the
    feed-forward layers for anything else; otherwise ``scope`` itself."""
    if scope == "auto":
        return "linear" if backbone == "whisper-base" else "ffn"
    if scope not in INT8_SCOPES:
        raise ValueError(f"int8 scope must be auto or one of {INT8_SCOPES}, got {scope!r}")
    return scope


def int8_excluded_nodes(fp32: Path, scope: str) -> list[str]:
    """MatMul/Gemm nodes to keep in fp32.

    Always the log-mel filterbank product (its input, a power spectrum, spans ten orders of
    magnitude: one 8-bit scale cannot hold it) and the small pooling head. With ``ffn``
    also the attention projections, leaving the feed-forward layers (two thirds of the
    encoder's weights) quantised.
    """
    import onnx

    if scope not in INT8_SCOPES:
        raise ValueError(f"int8 scope must be one of {INT8_SCOPES}, got {scope!r}")
    graph = onnx.load(str(fp32), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    keep = [n for n in names if "/frontend/" in n or "/head/" in n]
    if scope == "ffn":
        keep += [n for n in names if "_proj/" in n]
    return keep


def quantize_int8(fp32: Path, out: Path, *, scope: str = "ffn") -> Path:
    """Dynamic int8 quantisation of MatMul and Gemm weights only (per output channel).

    ONNX Runtime's default also quantises convolutions, which makes this model 2–4× slower
    on CPU (ConvInteger has no fast kernel); the front end and stem stay fp32. Dynamic
    quantisation takes one activation scale per tensor, so a window's int8 scores shift
    slightly with the windows batched beside it; quantising the feed-forward layers only
    (``scope="ffn"``) keeps that within the parity target.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=int8_excluded_nodes(fp32, scope),
        extra_options={"MatMulConstBOnly": True},
    )
    return out


def convert_fp16(fp32: Path, out: Path) -> Path:
    """fp16 weights and activations for GPUs, float32 input and output kept. The log-mel
    front end stays fp32: its power spectrum can exceed fp16's range on loud audio."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    frontend = [n.name for n in model.graph.node if "frontend" in n.name or "/Softmax" == n.name]
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=frontend)
    onnx.save(half, str(out))
    return out


#: Differences up to float16's smallest subnormal step are the same weight: ONNX Runtime's
#: float16 converter and torch's ``.half()`` round a few subnormal values the other way.
HALF_SUBNORMAL = 2.0 ** -24


def share_half_weights(onnx_path: Path, safetensors_path: Path, *, min_bytes: int = 1024) -> list[str]:
    """Make the float16 ONNX file read its weights from the PyTorch backend's safetensors
    file instead of holding a second copy (half the shipped size of the two).

    Every initializer of at least ``min_bytes`` that is a tensor of the safetensors file,
    or its transpose (the exporter stores ``Linear`` weights transposed for ``MatMul``),
    becomes ONNX external data at that tensor's offset in the safetensors file; a transposed
    one is read in the file's layout and turned by a ``Transpose`` node, which ONNX Runtime
    folds into a constant when it loads the model. Returns the names of the files the ONNX
    model now reads (the safetensors file's name, or nothing when no tensor matched).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    model = onnx.load(str(onnx_path))
    tensors = load_file(str(safetensors_path))
    with safetensors_path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data_start = 8 + header_len
    by_shape: dict[tuple, list[tuple[str, np.ndarray, bool]]] = {}
    for key, value in tensors.items():
        by_shape.setdefault(value.shape, []).append((key, value, False))
        if value.ndim == 2:
            by_shape.setdefault(value.shape[::-1], []).append((key, value.T, True))

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= HALF_SUBNORMAL)

    transposes = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT16:
            continue
        array = numpy_helper.to_array(init)
        if array.nbytes < min_bytes:
            continue
        match = next(((key, transposed) for key, value, transposed in by_shape.get(array.shape, [])
                      if same(array, value)), None)
        if match is None:
            continue
        key, transposed = match
        begin, end = header[key]["data_offsets"]
        if transposed:
            name = init.name
            init.name = f"{name}__stored"
            init.dims[:] = list(array.shape[::-1])
            transposes.append(helper.make_node("Transpose", [init.name], [name], perm=[1, 0],
                                               name=f"{name}__transpose"))
        init.ClearField("raw_data")
        init.ClearField("int32_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for field, text in (("location", safetensors_path.name),
                            ("offset", str(data_start + begin)), ("length", str(end - begin))):
            entry = init.external_data.add()
            entry.key, entry.value = field, text
    shared = any(i.data_location == TensorProto.EXTERNAL for i in model.graph.initializer)
    if not shared:
        return []
    nodes = transposes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(onnx_path))
    return [safetensors_path.name]


def parity(net: EmotionNet, onnx_path: Path, windows: np.ndarray, *, batch_size: int = 16) -> dict:
    """Compare an ONNX file with the PyTorch network on the same windows."""
    from models.ort import make_session

    session = make_session(onnx_path, device="cpu", threads=2)
    torch_probs, onnx_probs = [], []
    predict = torch_predict(net.float().eval())
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        torch_probs.append(predict(batch))
        onnx_probs.append(session.run(None, {"waveform": batch})[0])
    a, b = np.concatenate(torch_probs), np.concatenate(onnx_probs)
    return {
        "windows": int(len(a)),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        "max_abs_prob_diff": float(np.abs(a - b).max()),
    }


def parity_half_weights(net: EmotionNet, windows: np.ndarray, *, batch_size: int = 16) -> dict:
    """The PyTorch backend's weights (rounded to float16, as shipped) against the network."""
    import copy

    rounded = copy.deepcopy(net).float().eval()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    a, b = [], []
    for i in range(0, len(windows), batch_size):
        x = torch.from_numpy(windows[i : i + batch_size])
        with torch.inference_mode():
            a.append(torch.softmax(net.float()(x), -1).numpy())
            b.append(torch.softmax(rounded(x), -1).numpy())
    pa, pb = np.concatenate(a), np.concatenate(b)
    return {"windows": int(len(pa)), "argmax_agreement": float((pa.argmax(-1) == pb.argmax(-1)).mean()),
            "max_abs_prob_diff": float(np.abs(pa - pb).max())}


def check_variants(variants: tuple[str, ...]) -> None:
    """Refuse, before anything is read or written, variants export does not know."""
    known = (*VARIANTS, TORCH_VARIANT)
    unknown = [v for v in variants if v not in known]
    if unknown or not variants:
        raise ValueError(f"variants {', '.join(unknown) or '(none)'}: choose one or more of "
                         f"{', '.join(known)}")


def export_checkpoint(
    checkpoint: Path | str,
    out_dir: Path | str,
    *,
    variants: tuple[str, ...] = VARIANTS,
    parity_windows: np.ndarray | None = None,
    name: str = "callmon-emotion",
    extra_card: dict | None = None,
    int8_scope: str = "auto",
    calibration: dict | None = None,
) -> ModelCard:
    """Export a ``model.pt`` from ``callmon train`` into ``out_dir`` with its model card.

    Args:
        parity_windows: ``(n, window_samples)`` audio to measure ONNX↔PyTorch agreement on;
            the figures go into the card.
        calibration: a ``callmon calibrate`` report: its median temperature and chosen
            alert configuration are stored in the card, its test figures quoted.
    """
    from trainer.train import load_checkpoint

    check_variants(variants)
    out_dir = Path(out_dir)
    net, cfg, metrics = load_checkpoint(checkpoint)
    int8_scope = resolve_int8_scope(int8_scope, cfg.backbone)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / "emotion-fp32.onnx"
    export_fp32(net, fp32, window_samples=cfg.window_samples)
    files = {"fp32": fp32.name}
    if "int8" in variants:
        files["int8"] = quantize_int8(fp32, out_dir / "emotion-int8.onnx", scope=int8_scope).name
    if "fp16" in variants:
        files["fp16"] = convert_fp16(fp32, out_dir / "emotion-fp16.onnx").name
    external_data = {}
    if TORCH_VARIANT in variants:  # the PyTorch backend's weights (GPU hosts)
        files[TORCH_VARIANT] = save_torch_weights(net, out_dir / TORCH_FILE).name
        if "fp16" in files:  # one copy of the float16 weights for both backends
            shared = share_half_weights(out_dir / files["fp16"], out_dir / TORCH_FILE)
            if shared:
                external_data[files["fp16"]] = shared
    parity_report = {}
    if parity_windows is not None:
        if TORCH_VARIANT in files:
            parity_report[TORCH_VARIANT] = parity_half_weights(net, parity_windows)
        for variant in ("fp32", "int8"):
            if variant in files:
                parity_report[variant] = parity(net, out_dir / files[variant], parity_windows)
    if "fp32" not in variants:
        fp32.unlink()
        del files["fp32"]
    fields = calibration_fields(calibration) if calibration else {}
    card = ModelCard(
        name=name,
        labels=tuple(cfg.label_names),
        sample_rate_hz=16_000,
        window_s=cfg.window_s,
        backbone=cfg.backbone,
        files=files,
        sha256={f: sha256_of(out_dir / f) for f in files.values()},
        external_data=external_data,
        training={"config": metrics.get("config", {}), "split": metrics.get("split", {}),
                  "epochs_run": metrics.get("epochs_run"),
                  "train_seconds": metrics.get("train_seconds"), "int8_scope": int8_scope,
                  **{k: metrics[k] for k in ("precision", "machine") if k in metrics},
                  **(extra_card or {})},
        evaluation={
            "held_out_speakers": metrics.get("split", {}).get("test", []),
            "held_out": _brief(metrics.get("test")),
            "held_out_telephone": _brief(metrics.get("test_telephone")),
            "onnx_parity": parity_report,
            **({"alerts_cross_validated": fields["alerts_cross_validated"]}
               if calibration else {}),
        },
        calibration=fields.get("calibration", {}),
        alerts=fields.get("alerts", {}),
    )
    card.save(out_dir)
    from models.card_markdown import write as write_model_card

    write_model_card(card, out_dir)
    log.info("exported %s to %s", sorted(files), out_dir)
    return card


def _brief(report: dict | None) -> dict:
    if not report:
        return {}
    keys = ("n", "accuracy", "uar", "macro_f1", "per_class_recall")
    return json.loads(json.dumps({k: report[k] for k in keys if k in report}))
