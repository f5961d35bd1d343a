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
    """Stream the default input device until Ctrl-C. The microphone is opened before the
    server hears of the call: without one, nothing reaches the server (no phantom call)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"--mic needs the sounddevice package and PortAudio "
                           f"(pip install -e '.[mic]'; apt-get install libportaudio2): {exc}"
                           ) from exc
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=100)

    def put(block: np.ndarray) -> None:
        if frames.full():  # the network stalled: drop the oldest audio, never the newest
            frames.get_nowait()
        frames.put_nowait(block)

    def callback(indata, _frames, _time, _status) -> None:
        loop.call_soon_threadsafe(put, indata.copy())

    try:
        device = sd.query_devices(kind="input")
        stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32",
                                blocksize=rate // 50, callback=callback)
    except (sd.PortAudioError, ValueError) as exc:
        raise RuntimeError(f"no microphone to record from ({exc}): is a sound card or "
                           "headset connected?") from None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    outcome = StreamOutcome()
    with stream:
        async with connect(url, additional_headers=headers, compression=None) as ws:
            await ws.send(json.dumps({
                "type": "start", "call_id": call_id or f"mic-{uuid.uuid4().hex[:8]}",
                "sample_rate": rate, "encoding": "pcm_s16le", "channels": 1,
                "roles": ["customer"],
                "metadata": {"device": device.get("name", ""), **(metadata or {})}}))
            receiver = asyncio.create_task(_receive(ws, outcome, on_message))
            try:
                while not receiver.done():
                    await ws.send(encode(await frames.get(), "pcm_s16le"))
            except (KeyboardInterrupt, asyncio.CancelledError):
                pass
            await ws.send(json.dumps({"type": "stop"}))
            await receiver
    return 0
