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
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from models.card import ModelCard
from models.inference import WindowScorer

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<4sII")
REPLY = struct.Struct("<4sBII")
LENGTH = struct.Struct("<I")
MAX_WINDOWS_PER_REQUEST = 4096


class InferenceServer:
    """Serves ``model.run_windows`` to local processes, coalescing their requests.

    Args:
        model: the loaded model (ONNX Runtime or PyTorch backend).
        path: the Unix socket to listen on.
        max_batch: most windows per model call (requests are never split).
        max_wait_ms: how long a lone request waits for others to join its batch.
    """

    def __init__(self, model: WindowScorer, path: Path, *, max_batch: int = 256,
                 max_wait_ms: float = 2.0) -> None:
        self.model = model
        self.path = Path(path)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.server: asyncio.AbstractServer | None = None
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._batcher: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.batches = 0
        self.windows = 0
        self._hello = json.dumps({"labels": list(model.labels), "variant": model.variant,
                                  "card": json.loads(model.card.to_json())}).encode()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        self.path.chmod(0o600)  # the workers run as the same user
        self._batcher = asyncio.create_task(self._batch_loop(), name="inference-batcher")
        log.info("inference server on %s (%s, batches up to %d)", self.path, self.model.variant,
                 self.max_batch)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        self._executor.shutdown(wait=True)
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(LENGTH.pack(len(self._hello)) + self._hello)
        samples_expected = self.model.window_samples
        try:
            while True:
                magic, n, samples = REQUEST.unpack(await reader.readexactly(REQUEST.size))
                if (magic != b"CMW1" or samples != samples_expected
                        or not 0 < n <= MAX_WINDOWS_PER_REQUEST):
                    message = (f"bad request: magic {magic!r}, {n} windows of {samples} samples "
                               f"(this model takes {samples_expected})").encode()
                    writer.write(REPLY.pack(b"CMR1", 1, len(message), 0) + message)
                    await writer.drain()
                    return
                data = await reader.readexactly(n * samples * 4)
                windows = np.frombuffer(data, dtype="<f4").reshape(n, samples)
                future: asyncio.Future = asyncio.get_running_loop().create_future()
                await self._queue.put((windows, future))
                try:
                    probs = await future
                except Exception as exc:  # the model failed on this batch
                    message = f"inference failed: {exc}".encode()
                    writer.write(REPLY.pack(b"CMR1", 1, len(message), 0) + message)
                else:
                    out = np.ascontiguousarray(probs, dtype="<f4")
                    writer.write(REPLY.pack(b"CMR1", 0, *out.shape) + out.tobytes())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    item = (self._queue.get_nowait() if not self._queue.empty()
                            else await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
                except TimeoutError:
                    break
                batch.append(item)
                size += len(item[0])
            windows = np.concatenate([w for w, _ in batch]) if len(batch) > 1 else batch[0][0]
            try:
                probs = await loop.run_in_executor(self._executor, self.model.run_windows,
                                                   windows)
            except Exception as exc:
                log.exception("inference failed on a batch of %d windows", len(windows))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.windows += len(windows)
            start = 0
            for w, future in batch:
                if not future.done():
                    future.set_result(probs[start : start + len(w)])
                start += len(w)


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
                self._sock.sendall(REQUEST.pack(b"CMW1", len(part), samples) + part.tobytes())
                magic, status, a, b = REPLY.unpack(self._read(REPLY.size))
                if status != 0:
                    raise RuntimeError(self._read(a).decode(errors="replace"))
                out.append(np.frombuffer(self._read(a * b * 4), dtype="<f4").reshape(a, b))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self._sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ConnectionError(f"the inference server at {self.path} went away")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()
