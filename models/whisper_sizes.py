"""The Whisper encoder sizes callmon loads and the ``NAME:N`` backbone names that cut them.

Torch-free, so that the model card can be rendered (and a name checked) without PyTorch.
"""

from __future__ import annotations

from typing import Any

#: Encoder hyper-parameters of the Whisper sizes callmon loads.
WHISPER_TINY: dict[str, Any] = {"d_model": 384, "heads": 6, "ffn": 1536, "layers": 4}
WHISPER_BASE: dict[str, Any] = {"d_model": 512, "heads": 8, "ffn": 2048, "layers": 6}
WHISPER_SIZES: dict[str, dict[str, Any]] = {"whisper-tiny": WHISPER_TINY, "whisper-base": WHISPER_BASE}
#: Each pretrained Whisper backbone → the same architecture with random weights, for
#: rebuilding a trained network whose weights all come from its own file.
RANDOM_TWINS = {"whisper-tiny": "whisper-random", "whisper-base": "whisper-base-random"}
RANDOM_SIZES = {"whisper-random": WHISPER_TINY, "whisper-base-random": WHISPER_BASE}


def split_layers(name: str) -> tuple[str, int | None]:
    """``whisper-base:4`` → ``("whisper-base", 4)``: a Whisper backbone cut to its lowest
    layers (the rest are never loaded or run); a plain name → ``(name, None)``.

    Raises:
        ValueError: the count is not a whole number from 1 to the encoder's depth.
    """
    base, sep, count = name.partition(":")
    sizes = WHISPER_SIZES.get(base) or RANDOM_SIZES.get(base)
    if not sep or sizes is None:
        return name, None
    if not count.isdigit() or not 1 <= int(count) <= sizes["layers"]:
        raise ValueError(f"backbone {name!r}: after the colon comes how many of {base}'s "
                         f"{sizes['layers']} layers to keep (1-{sizes['layers']})")
    return base, int(count)


def check_backbone(name: str) -> None:
    """Refuse a backbone name nothing can build, before any weights or audio are read.

    Raises:
        ValueError: an unknown name, an empty ``wav2vec2:`` path, or a bad ``:N`` count.
    """
    base, _ = split_layers(name)
    if base in WHISPER_SIZES or base in RANDOM_SIZES:
        return
    if name.startswith("wav2vec2:") and name.partition(":")[2].strip():
        return
    raise ValueError(f"unknown backbone {name!r}: use whisper-tiny, whisper-base, "
                     "whisper-random, whisper-base-random (each optionally :LAYERS) or "
                     "wav2vec2:PATH")
