"""Micro-batched inference shared by every call.

Windows from all streams wait in one arrival-ordered queue. A window that has waited more
than ``max_age_s`` since its last sample arrived is shed when the next batch is formed,
dropped and counted: fresh audio matters more than stale audio, so an overloaded server
keeps its latency bounded instead of falling further behind. Each stream may also hold at
most ``max_pending_per_stream`` windows (beyond that its *oldest* is shed at once), which
bounds memory; the bound is set above what a client may send at once (the speed limit's
head start), so a burst the server allows is scored, not shed by count while its first
windows wait for the model. Ingest never waits. A single worker thread runs the model on
batches of up to ``max_batch`` windows, waiting at most ``max_wait_ms`` to fill one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from streamer.aio import cancel
from streamer.metrics import Histogram
from streamer.windowing import Window

log = logging.getLogger(__name__)

# Called with the window's probabilities, or with None when the window was dropped.
ResultCallback = Callable[[Window, np.ndarray | None], None]


@dataclass(slots=True)
class _Pending:
    window: Window
    callback: ResultCallback
    dropped: bool = False


@dataclass(slots=True)
class SchedulerStats:
    submitted: int = 0
    scored: int = 0
    dropped: int = 0
    batches: int = 0
    errors: int = 0
    batch_sizes: Histogram = field(default_factory=lambda: Histogram((1, 2, 4, 8, 16, 32, 64)))
    inference_ms: Histogram = field(
        default_factory=lambda: Histogram((5, 10, 25, 50, 100, 250, 500, 1000, 2500)))


class InferenceScheduler:
    """Batches windows into a model callable ``(batch, samples) → (batch, classes)``.

    Args:
        predict: the model's batch function (e.g. ``EmotionModel.run_windows``); it runs
            in a worker thread, never on the event loop.
        max_batch: largest batch handed to the model.
        max_wait_ms: how long a lone window may wait for company.
        max_pending_per_stream: queue bound per (call, channel) before drop-oldest.
        max_age_s: a window that has waited longer than this (from its ``ready_at``) when
            a batch is formed is shed instead of scored.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16,
                 max_wait_ms: float = 10.0, max_pending_per_stream: int = 16,
                 max_age_s: float = 3.0) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_pending_per_stream = max_pending_per_stream
        self.max_age_s = max_age_s
        self.stats = SchedulerStats()
        self._queue: deque[_Pending] = deque()
        self._per_stream: dict[tuple[str, int], deque[_Pending]] = {}
        self._live = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return self._live

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inference-scheduler")

    async def stop(self, *, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop; with ``drain``, score what is pending first."""
        if drain:
            try:
                await asyncio.wait_for(self.drained(), timeout_s)
            except TimeoutError:
                log.warning("inference drain timed out with %d windows pending", self._live)
        await cancel(self._task)
        self._task = None
        self._executor.shutdown(wait=True)

    async def drained(self) -> None:
        """Return once nothing is pending or running."""
        while self._live or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    def submit(self, window: Window, callback: ResultCallback) -> None:
        """Queue a window; never blocks. May drop that stream's oldest pending window."""
        key = (window.call_id, window.channel)
        stream = self._per_stream.setdefault(key, deque())
        entry = _Pending(window, callback)
        stream.append(entry)
        self._queue.append(entry)
        self._live += 1
        self.stats.submitted += 1
        while len(stream) > self.max_pending_per_stream:
            self._shed(stream.popleft())
        self._idle.clear()
        # Wake the loop when there is work at all or a full batch; in between it sleeps out
        # its batching wait (one wake-up per batch, not one per window).
        if self._live == 1 or self._live >= self.max_batch:
            self._wakeup.set()

    def forget(self, call_id: str, channels: int) -> None:
        """Drop bookkeeping of a finished call (its pending windows still get scored)."""
        for channel in range(channels):
            stream = self._per_stream.get((call_id, channel))
            if stream is not None and not stream:
                del self._per_stream[(call_id, channel)]

    def _shed(self, entry: _Pending) -> None:
        entry.dropped = True
        self._live -= 1
        self.stats.dropped += 1
        try:
            entry.callback(entry.window, None)
        except Exception:  # one call's failure must not stop the scheduler or another call
            log.exception("result callback failed for %s", entry.window.call_id)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        stale_before = time.monotonic() - self.max_age_s
        while self._queue and len(batch) < self.max_batch:
            entry = self._queue.popleft()
            if entry.dropped:
                continue
            stream = self._per_stream.get((entry.window.call_id, entry.window.channel))
            if stream and stream[0] is entry:
                stream.popleft()
            if entry.window.ready_at < stale_before:
                self._shed(entry)
                continue
            batch.append(entry)
            self._live -= 1
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._live:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._live < self.max_batch and self.max_wait_s > 0:
                deadline = loop.time() + self.max_wait_s
                while self._live < self.max_batch and loop.time() < deadline:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            audio = np.stack([e.window.samples for e in batch])
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self.predict, audio)
            except Exception:  # a model failure must not kill the scheduler
                log.exception("inference failed on a batch of %d windows", len(batch))
                self.stats.errors += len(batch)
                for entry in batch:  # the windows are lost: tell their calls, as for a drop
                    try:
                        entry.callback(entry.window, None)
                    except Exception:
                        log.exception("result callback failed for %s", entry.window.call_id)
                continue
            self.stats.inference_ms.observe(1000 * (time.perf_counter() - started))
            self.stats.batches += 1
            self.stats.batch_sizes.observe(len(batch))
            self.stats.scored += len(batch)
            for entry, p in zip(batch, probs, strict=True):
                try:
                    entry.callback(entry.window, p)
                except Exception:
                    log.exception("result callback failed for %s", entry.window.call_id)
