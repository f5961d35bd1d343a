"""One model, many ingest processes: an inference server on a Unix socket, and the model
the ingest workers use in its place (:class:`RemoteModel`).

``callmon serve --workers N`` runs the model once (on the GPU, typically) in the parent
process, and N ingest workers that share the ingest port (``SO_REUSEPORT``): each does its
own websocket, decoding, resampling, windowing, voice gate, alerts and Redis publishing, and
sends its speech windows here. Requests from all workers are coalesced into batches of up to
``max_batch`` windows, so the model sees large batches however the calls are spread.

Wire format (little endian), after the server's hello (4-byte length + JSON: labels, the
model card, the variant):

    request  b"CMW1" | n: u32 | samples: u32 | n × samples float32
    reply    b"CMR1" | status: u8 (0 ok, 1 error) | a: u32 | b: u32 | payload
             ok: a × b float32 probabilities; error: a bytes of UTF-8 message
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np

from models.card import ModelCard
from models.inference import WindowScorer

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<4sII")
REPLY = struct.Struct("<4sBII")
LENGTH = struct.Struct("<I")
MAX_WINDOWS_PER_REQUEST = 4096
#: The most windows an ingest worker sends in one request when the model is on a GPU (see
#: service.scheduler_batch); on a CPU a worker keeps its configured batch.
WORKER_MAX_BATCH = 128


class InferenceServer:
    """Serves ``model.run_windows`` to local processes, coalescing their requests.

    Plain threads, not the event loop: one reading thread per worker connection receives
    each request straight into a numpy buffer (``recv_into``: no intermediate copies, the GIL
    released while it waits), and one batching thread runs the model and answers. (A first,
    asyncio version added 0.9 ms of event-loop time per window across the processes at 100
    calls, this one 0.55 ms: docs/results/bench_load_workers.json.)

    Args:
        model: the loaded model (ONNX Runtime or PyTorch backend).
        path: the Unix socket to listen on.
        max_batch: most windows per model call (requests are never split: one larger than
            this goes alone, and the model splits it).
        max_wait_ms: how long a lone request waits for others to join its batch.
    """

    def __init__(self, model: WindowScorer, path: Path, *, max_batch: int = 256,
                 max_wait_ms: float = 2.0) -> None:
        self.model = model
        self.path = Path(path)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batches = 0
        self.windows = 0
        self._queue: queue.Queue[tuple[np.ndarray, socket.socket, threading.Event]] = (
            queue.Queue())
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._hello = json.dumps({"labels": list(model.labels), "variant": model.variant,
                                  "card": json.loads(model.card.to_json()),
                                  "worker_batch": WORKER_MAX_BATCH if model.on_gpu else None,
                                  }).encode()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o600)  # the workers run as the same user
        listener.listen(256)
        listener.settimeout(0.2)
        self._listener = listener
        for target, name in ((self._accept_loop, "inference-accept"),
                             (self._batch_loop, "inference-batcher")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("inference server on %s (%s, batches up to %d)", self.path, self.model.variant,
                 self.max_batch)

    async def close(self) -> None:
        self._stop.set()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 5)
        if self._listener is not None:
            self._listener.close()
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._connections.add(conn)
            thread = threading.Thread(target=self._serve_connection, args=(conn,),
                                      name="inference-conn", daemon=True)
            thread.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        samples_expected = self.model.window_samples
        header = bytearray(REQUEST.size)
        # One request in flight per connection, so one buffer per connection, reused: a
        # fresh 192 KB per window costs page faults at thousands of windows a second.
        buffer = np.empty((0, samples_expected), dtype="<f4")
        try:
            conn.sendall(LENGTH.pack(len(self._hello)) + self._hello)
            while not self._stop.is_set():
                if not _recv_exact(conn, memoryview(header)):
                    return
                magic, n, samples = REQUEST.unpack(header)
                if (magic != b"CMW1" or samples != samples_expected
                        or not 0 < n <= MAX_WINDOWS_PER_REQUEST):
                    message = (f"bad request: magic {magic!r}, {n} windows of {samples} samples "
                               f"(this model takes {samples_expected})").encode()
                    conn.sendall(REPLY.pack(b"CMR1", 1, len(message), 0) + message)
                    return
                if len(buffer) < n:
                    buffer = np.empty((max(n, 2 * len(buffer)), samples), dtype="<f4")
                windows = buffer[:n]
                if not _recv_exact(conn, windows.data.cast("B")):
                    return
                # The batcher answers it; only then is the buffer written again.
                answered = threading.Event()
                self._queue.put((windows, conn, answered))
                answered.wait()
        except OSError:
            pass
        finally:
            self._connections.discard(conn)
            conn.close()

    def _batch_loop(self) -> None:
        held = None  # a request that would have overfilled the last batch: it opens the next
        while not self._stop.is_set():
            if held is not None:
                first, held = held, None
            else:
                try:
                    first = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
            batch = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if size + len(item[0]) > self.max_batch:
                    held = item  # the model takes max_batch at most in one pass
                    break
                batch.append(item)
                size += len(item[0])
            try:
                probs = self.model.run_window_parts([w for w, _, _ in batch])
            except Exception as exc:  # the model failed on this batch: every request hears it
                log.exception("inference failed on a batch of %d windows", size)
                message = f"inference failed: {exc}".encode()
                for _, conn, answered in batch:
                    _reply(conn, answered, REPLY.pack(b"CMR1", 1, len(message), 0) + message)
                continue
            self.batches += 1
            self.windows += size
            start = 0
            for w, conn, answered in batch:
                part = np.ascontiguousarray(probs[start : start + len(w)], dtype="<f4")
                start += len(w)
                _reply(conn, answered, REPLY.pack(b"CMR1", 0, *part.shape) + part.tobytes())


def _reply(conn: socket.socket, answered: threading.Event, data: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(data)
    answered.set()


def _send_all(sock: socket.socket, buffers: list) -> None:
    """``sendmsg`` until every byte of ``buffers`` is sent (a signal can cut one short)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def _recv_exact(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``conn``; False when the peer closed first.

    One system call for the whole view (``MSG_WAITALL``; more only if a signal cuts it
    short): read in socket-buffer-sized pieces, a request of megabytes took the GIL back
    after each piece, and behind a busy thread that is a wait each time."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
        if n == 0:
            return False
        got += n
    return True


class RemoteModel(WindowScorer):
    """The model of an :class:`InferenceServer`, for an ingest worker: same labels, card
    and ``run_windows`` as the model it stands for (temperature applied by the server).

    Raises:
        ConnectionError: no server answers at ``path`` within ``connect_timeout_s``.
    """

    def __init__(self, path: Path | str, *, connect_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(self.path)
                break
            except OSError as exc:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no inference server at {self.path}: {exc}") from None
                time.sleep(0.1)
        hello = json.loads(self._read(LENGTH.unpack(self._read(LENGTH.size))[0]))
        self.card = ModelCard.from_dict(hello["card"], where=f"inference server {self.path}")
        self.labels = tuple(hello["labels"])
        self.variant = f"remote {hello['variant']}"
        # How many windows the model process takes per request (None: the worker's own batch).
        self.worker_batch: int | None = hello.get("worker_batch")
        self._lock = threading.Lock()

    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(windows, dtype="<f4")
        n, samples = batch.shape
        if n == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = []
        with self._lock:  # one request in flight per connection
            for i in range(0, n, MAX_WINDOWS_PER_REQUEST):
                part = batch[i : i + MAX_WINDOWS_PER_REQUEST]
                # Header and windows in one system call, without a joined copy of the windows.
                _send_all(self._sock, [REQUEST.pack(b"CMW1", len(part), samples),
                                       part.data.cast("B")])
                magic, status, a, b = REPLY.unpack(self._read(REPLY.size))
                if status != 0:
                    raise RuntimeError(self._read(a).decode(errors="replace"))
                probs = np.empty((a, b), dtype="<f4")
                if not _recv_exact(self._sock, probs.data.cast("B")):
                    raise ConnectionError(f"the inference server at {self.path} went away")
                out.append(probs)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _read(self, n: int) -> bytearray:
        buffer = bytearray(n)
        if not _recv_exact(self._sock, memoryview(buffer)):
            raise ConnectionError(f"the inference server at {self.path} went away")
        return buffer

    def close(self) -> None:
        self._sock.close()
