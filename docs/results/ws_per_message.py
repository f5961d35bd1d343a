"""Server CPU per websocket message: the websockets library (what ingest uses) against
picows, a compiled one (docs/scaling.md). Not part of callmon; run it by hand:

    pip install picows==2.3.1   # only for the picows rows
    python docs/results/ws_per_message.py [--connections 200] [--seconds 6]

Each mode starts a server process on uvloop, then ``--connections`` clients each send a
640-byte binary frame every 20 ms (Twilio's pace) on loopback; the server reports its own
CPU time over the messages it received, divided by their number.

Modes: ``websockets`` (a ``recv()`` loop per connection, as ingest does), ``picows-queue``
(picows handing each frame to one reader task per connection), ``picows-callback`` (picows
handling each frame in its callback, no task wake-up).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time

import uvloop

MODES = ("websockets", "picows-queue", "picows-callback")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve(mode: str, expected: int) -> None:
    received = 0
    done = asyncio.Event()

    def count() -> None:
        nonlocal received
        received += 1
        if received == expected:
            done.set()

    if mode == "websockets":
        from websockets.asyncio.server import serve as ws_serve

        async def handler(connection) -> None:
            async for _ in connection:
                count()

        server = await ws_serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                                max_queue=16)
    else:
        from picows import WSListener, WSMsgType, ws_create_server

        class Listener(WSListener):
            def on_ws_connected(self, transport) -> None:
                self.queue: asyncio.Queue[bytes] = asyncio.Queue()
                self.reader = asyncio.ensure_future(self.read())

            async def read(self) -> None:
                while True:
                    await self.queue.get()
                    count()

            def on_ws_frame(self, transport, frame) -> None:
                if frame.msg_type == WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()
                    return
                payload = frame.get_payload_as_bytes()
                if mode == "picows-queue":
                    self.queue.put_nowait(payload)
                else:
                    count()

        server = await ws_create_server(lambda request: Listener(), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(0.5)
    started = cpu_s()
    await asyncio.wait_for(done.wait(), 120)
    print(f"{(cpu_s() - started) / expected * 1e6:.2f}", flush=True)


async def clients(port: int, connections: int, messages: int) -> None:
    from websockets.asyncio.client import connect

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.02 / connections)  # spread the sends over the 20 ms
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            frame, t0 = bytes(640), time.perf_counter()
            for j in range(messages):
                await ws.send(frame)
                await asyncio.sleep(max(0.0, t0 + (j + 1) * 0.02 - time.perf_counter()))
            await asyncio.sleep(2)

    await asyncio.gather(*(one(i) for i in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.serve, args.expect))
        return
    messages = int(args.seconds / 0.02)
    expected = args.connections * messages
    for mode in MODES:
        if mode.startswith("picows"):
            try:
                import picows  # noqa: F401
            except ImportError:
                print(f"{mode}: skipped (pip install picows)")
                continue
        server = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--expect",
                                   str(expected)], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        uvloop.run(clients(port, args.connections, messages))
        print(f"{mode}: {server.stdout.readline().strip()} µs server CPU per message "
              f"({args.connections} connections, {expected} messages)", flush=True)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
