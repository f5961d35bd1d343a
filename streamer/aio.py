"""Small asyncio helpers shared by the stages."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event``; False if ``timeout_s`` passed first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
        return True
    except TimeoutError:
        return False


LOOPS = ("auto", "asyncio", "uvloop")


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to the hard limit and return it: every call is
    a socket, and the usual soft limit (1024) would refuse a node's thousandth call with
    "too many open files". (Raising the hard limit is the host's business: systemd's
    LimitNOFILE, docker run --ulimit nofile=...)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(main, loop: str = "auto"):
    """Run the coroutine ``main`` to completion on a new event loop and return its result.

    ``loop``: ``uvloop`` (libuv's loop: cheaper socket reads, writes and callbacks, which is
    where a node with thousands of calls spends much of its time), ``asyncio`` (the standard
    library's), or ``auto``: uvloop when it is installed, else asyncio.
    """
    if loop not in LOOPS:
        main.close()  # never run: no "coroutine was never awaited" warning
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    factory = None
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise RuntimeError("loop 'uvloop' asked for, but uvloop is not installed "
                                   "(pip install uvloop)") from None
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the event loop running now."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
