"""Where commands write, checked when the command line is read: a calibration or benchmark
that runs for many minutes used to fail only at its last step, on an ``--out`` it could
never have written. Used as argparse ``type``s; nothing is created here."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _why_not_writable(path: Path, mode: int) -> str | None:
    """Why this process could not write ``path``, or ``None``: an existing path must allow
    ``mode``; a missing one's nearest existing ancestor must be a folder this process may
    write in (folders between are created by the command)."""
    if path.exists():
        return None if os.access(path, mode) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def report_file(text: str) -> str:
    """A report file to write (JSON, with a .md or .png beside it)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a folder: give a file name, such as {path / 'report.json'}")
    if problem := _why_not_writable(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {problem}")
    return text


def output_folder(text: str) -> str:
    """A folder to write into (created when missing)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    if problem := _why_not_writable(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text}: {problem}")
    return text
