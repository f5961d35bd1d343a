"""Child processes that do not outlive the process that started them.

A parent that ends by SIGKILL (the kernel's OOM killer, ``kill -9``, a crashed container
runtime) runs no ``finally``: its embedded Redis, its ingest workers or a benchmark's server
would go on alone, holding ports and memory, with ``serve --workers`` still accepting calls
it can no longer score. On Linux, :func:`popen` asks the kernel to send the child SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``); elsewhere it is a plain ``subprocess.Popen``.

The kernel ties the child to the *thread* that started it, not to the process: a child
started from another thread would be stopped when that thread ends (a thread pool's worker,
say) while its owner still needs it. So only children started from the main thread are tied;
from any other thread :func:`popen` is a plain ``Popen``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Any

PR_SET_PDEATHSIG = 1

# Resolved here, in the parent: between fork and exec the child may only make plain calls.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with(parent: int) -> None:
    """preexec_fn: SIGTERM on the parent's death; if it died already, end now."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def popen(args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` for a child that ends with its parent."""
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return subprocess.Popen(args, **kwargs)
    parent = os.getpid()
    return subprocess.Popen(args, preexec_fn=lambda: _die_with(parent), **kwargs)  # noqa: PLW1509
