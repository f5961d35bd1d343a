"""``callmon stream --mic``: the default microphone over the native protocol.

sounddevice (and PortAudio behind it) is imported here only, so the server never needs it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import numpy as np
from websockets.asyncio.client import connect

from streamer.tools.client import StreamOutcome, _receive, encode


async def stream_microphone(url: str, *, rate: int = 16000, call_id: str | None = None,
                            token: str | None = None,
                            on_message: Callable[[dict], None] | None = None,
                            metadata: dict | None = None) -> int:
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"--mic needs the sounddevice package and PortAudio: {exc}") from exc
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=100)

    def callback(indata, _frames, _time, _status) -> None:
        loop.call_soon_threadsafe(frames.put_nowait, indata.copy())

    headers = {"Authorization": f"Bearer {token}"} if token else None
    outcome = StreamOutcome()
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send(json.dumps({"type": "start", "call_id": call_id or f"mic-{uuid.uuid4().hex[:8]}",
                                  "sample_rate": rate, "encoding": "pcm_s16le", "channels": 1,
                                  "roles": ["customer"], "metadata": metadata or {}}))
        receiver = asyncio.create_task(_receive(ws, outcome, on_message))
        with sd.InputStream(samplerate=rate, channels=1, dtype="float32",
                            blocksize=rate // 50, callback=callback):
            try:
                while not receiver.done():
                    await ws.send(encode(await frames.get(), "pcm_s16le"))
            except (KeyboardInterrupt, asyncio.CancelledError):
                pass
        await ws.send(json.dumps({"type": "stop"}))
        await receiver
    return 0
