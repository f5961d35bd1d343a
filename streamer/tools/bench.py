"""``callmon bench load``: N concurrent calls at real-time pace over loopback, from real
audio, against a ``callmon serve`` process; latency is measured from the moment the last
sample of a window was sent to the moment its result arrives on Redis pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from models.audio import MODEL_RATE_HZ
from streamer import aio, children, schema
from streamer.tools.client import encode
from streamer.tools.redis_server import EmbeddedRedis, free_port

RATE = MODEL_RATE_HZ  # the calls are sent at the model's rate
#: A run whose load generators sent later than this (p95 over calls) did not put its call
#: count on the server in real time: it does not count as held.
SENDER_LATE_LIMIT_MS = 500.0


@dataclass(slots=True)
class LoadResult:
    calls: int
    duration_s: float
    frame_ms: int
    windows: int = 0
    windows_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    dropped: int = 0
    refused: int = 0
    server_cpu_pct: float = 0.0
    # The event-loop thread alone: everything but the model (websocket frames, decoding,
    # resampling, windowing, voice gate, alerts, JSON, Redis), per window of call audio.
    server_loop_cpu_pct: float = 0.0
    loop_ms_per_window: float = 0.0
    # Every process of the server (workers, the model's, their threads), CPU ms per window of
    # call audio: what sizes a host's cores. (server_cpu_pct over windows_per_s is not that:
    # the first is averaged over the run's wall time, the second over the calls' audio.)
    server_ms_per_window: float = 0.0
    server_rss_mb: float = 0.0
    # How far behind real time the load generators sent (each call's worst frame, p95 and
    # max over calls): beyond a window's hop, the server saw fewer real-time calls than asked.
    sender_late_p95_ms: float = 0.0
    sender_late_max_ms: float = 0.0
    # serve --workers: the parent alone (the model and its inference server), % of one core.
    server_parent_cpu_pct: float = 0.0
    # The whole host's busy time (load generators and Redis included), % of all its cores.
    host_cpu_busy_pct: float = 0.0
    # Why the calls counted as refused did not end: the server's error code, the load
    # generator's exception, or a connection closed without the call's summary.
    refusals: dict[str, int] = field(default_factory=dict)
    gpu_util_pct: float | None = None
    gpu_memory_mb: float | None = None
    # py-spy sampled the server during this count (--sample): it paused the process for each
    # sample, so the latencies are not the server's own and the count is not judged.
    sampled: bool = False
    latencies: list[float] = field(default_factory=list, repr=False)

    def held(self, p95_target_ms: float = 300.0) -> bool:
        """p95 under target, nothing dropped or refused, and the load really was real-time
        (the generators' p95 lateness under half a hop); never for a sampled count."""
        return (self.p95_ms < p95_target_ms and self.dropped == 0 and not self.refused
                and self.sender_late_p95_ms < SENDER_LATE_LIMIT_MS and not self.sampled)

    def row(self) -> dict:
        data = asdict(self)
        del data["latencies"]
        data["held"] = self.held()
        return data


def load_corpus_audio(data: Path, *, seconds: float = 120.0) -> np.ndarray:
    """A long 16 kHz speech signal made of real clips (all emotions, many speakers)."""
    from models.corpora import discover, load_audio

    items = discover(data)
    rng = np.random.default_rng(0)
    pieces, total = [], 0
    for i in rng.permutation(len(items)):
        clip = load_audio(items[i].path)
        pieces.append(clip)
        total += len(clip)
        if total >= seconds * RATE:
            break
    return np.concatenate(pieces)


def stat_cpu(path: str | Path) -> tuple[str, float]:
    """A process's or thread's name and CPU seconds so far (user and system), from its
    ``/proc/…/stat`` file."""
    text = Path(path).read_text()
    fields = text.rsplit(")", 1)[1].split()
    name = text[text.index("(") + 1 : text.rindex(")")]
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of process ``pid``: its name and CPU seconds so far."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            threads[int(task.name)] = stat_cpu(task / "stat")
    return threads


class ServerProcess:
    """``callmon serve`` in a child process, with /proc-based CPU and RSS readings."""

    def __init__(self, *, redis_url: str, port: int, extra_env: dict | None = None,
                 profile: Path | None = None) -> None:
        self.port = port
        env = {**os.environ, "REDIS_URL": redis_url, "CALLMON_PORT": str(port),
               "CALLMON_MAX_CALLS": "10000", "CALLMON_DASHBOARD_PORT": "0",
               "CALLMON_MAX_CONNECTIONS_PER_ADDRESS": "10000",  # every caller is on loopback
               **(extra_env or {})}
        # The server's log goes to a file: an unread pipe fills up and blocks its event loop.
        self.log = tempfile.NamedTemporaryFile(prefix="callmon-serve-", suffix=".log")
        # cProfile sees the main thread only: the event loop, i.e. the server's own costs.
        # On the standard library's loop, whose waiting is a visible epoll call: uvloop's
        # own time (waiting included) would be charged to whichever Python frame started it.
        runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
        if profile:
            env["CALLMON_LOOP"] = "asyncio"
        self.process = children.popen([sys.executable, *runner, "-m", "callmon_cli", "serve"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        # (when, CPU seconds) at the last reading, per kind of reading (see _cpu_since)
        self._marks = {kind: (time.monotonic(), self._cpu_seconds(**which))
                       for kind, which in self._READINGS.items()}

    def wait_ready(self, timeout_s: float = 180.0) -> None:  # GPU warm-up: ~1 min
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited: " + Path(self.log.name).read_text()[-2000:])
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                return
            time.sleep(0.1)  # readiness probe interval
        raise RuntimeError("server did not become ready")

    def _pids(self) -> list[int]:
        """The server and its descendants (``serve --workers``: the workers)."""
        out, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                todo.extend(int(c) for c in children)
        return out

    def _cpu_seconds(self, *, main_thread: bool = False, parent_only: bool = False) -> float:
        """CPU seconds of the server's processes (or of their main threads: the event loops;
        or of the parent process alone)."""
        total = 0.0
        for pid in [self.process.pid] if parent_only else self._pids():
            stat = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
            with contextlib.suppress(OSError):
                total += stat_cpu(stat)[1]
        return total

    def loop_pid(self) -> int:
        """The process whose event loop takes the calls: the first ingest worker under
        ``serve --workers``, else the server itself."""
        with contextlib.suppress(OSError):
            path = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
            workers = Path(path).read_text().split()
            if workers:
                return min(int(w) for w in workers)
        return self.process.pid

    #: What _cpu_seconds reads: every process, their main threads, the parent alone.
    _READINGS: dict[str, dict[str, bool]] = {
        "all": {}, "loop": {"main_thread": True}, "parent": {"parent_only": True}}

    def _cpu_since(self, kind: str) -> tuple[float, float]:
        """(wall seconds, CPU seconds) since the last reading of ``kind``."""
        now, cpu = time.monotonic(), self._cpu_seconds(**self._READINGS[kind])
        then, cpu_then = self._marks[kind]
        self._marks[kind] = (now, cpu)
        return max(now - then, 1e-9), cpu - cpu_then

    def loop_cpu_since_mark(self) -> float:
        """CPU seconds of the event-loop (main) threads since the last call."""
        return self._cpu_since("loop")[1]

    def cpu_since_mark(self) -> float:
        """CPU use since the last call, in % of one core."""
        wall, cpu = self.cpu_seconds_since_mark()
        return 100 * cpu / wall

    def cpu_seconds_since_mark(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of every process) since the last reading."""
        return self._cpu_since("all")

    def parent_cpu_since_mark(self) -> float:
        """The parent process's CPU use since the last call, in % of one core."""
        wall, cpu = self._cpu_since("parent")
        return 100 * cpu / wall

    def live_calls(self) -> int | None:
        """Calls the server holds now (its /healthz), or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return int(json.loads(r.read())["live_calls"])
        except (OSError, ValueError, KeyError):
            return None

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def _call(url: str, call_id: str, audio: np.ndarray, *, duration_s: float, frame_ms: int,
                sent_at: dict[str, np.ndarray], summary: dict[str, dict]) -> None:
    step = RATE * frame_ms // 1000
    n = int(duration_s * 1000 // frame_ms)
    times = np.zeros(n + 1)
    sent_at[call_id] = times
    reader: asyncio.Task | None = None
    try:
        # No client keepalive: on a 2-core machine the load generator's own event loop is
        # the first thing to saturate, and its late pongs would end calls the server keeps up with.
        async with connect(url, compression=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "call_id": call_id, "sample_rate": RATE,
                                      "encoding": "pcm_s16le", "channels": 1}))
            reader = asyncio.create_task(_read_summary(ws, call_id, summary))
            start = time.monotonic()
            offset = 0
            late = 0.0
            for i in range(n):
                delay = start + i * frame_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # real-time pacing of the simulated caller
                late = max(late, -delay)
                chunk = audio[offset : offset + step]
                if len(chunk) < step:
                    offset, chunk = 0, audio[:step]
                offset += step
                await ws.send(encode(chunk[:, None], "pcm_s16le"))
                times[i + 1] = time.time()
            await ws.send(json.dumps({"type": "stop"}))
            await reader
            summary.setdefault(call_id, {})["sender_late_s"] = late
    except Exception as exc:  # refused or dropped: counted, the run goes on
        if reader is not None:  # the server's error message, if it sent one, comes first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 2.0)
        summary.setdefault(call_id, {"error": f"{type(exc).__name__}: {exc}"})


async def _read_summary(ws, call_id: str, summary: dict[str, dict]) -> None:
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):  # a refusal closes with an error code
        async for message in ws:
            data = json.loads(message)
            if data.get("type") in ("ended", "error"):
                summary[call_id] = data


async def generate_load(urls: list[str], redis_url: str, audio: np.ndarray, *, calls: int,
                        first: int = 0, prefix: str = "bench", duration_s: float,
                        frame_ms: int, ramp_s: float) -> tuple[list[float], list[dict]]:
    """Calls ``first`` … ``first + calls - 1`` spread round-robin over the nodes at ``urls``,
    each timed from the moment a window's last frame is sent to its result on Redis.

    Returns:
        (latencies in ms, the ``ended``/``error`` summaries of the calls)
    """
    import redis.asyncio as aioredis

    sent_at: dict[str, np.ndarray] = {}
    summary: dict[str, dict] = {}
    latencies: list[float] = []
    frame_samples = RATE * frame_ms // 1000
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(schema.call_channel(f"{prefix}-*"))

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] != "pmessage":
                continue
            now = time.time()
            data = json.loads(msg["data"])
            if not data.get("speech"):
                continue
            times = sent_at.get(data["call_id"])
            frame = int(round(data["end_s"] * RATE)) // frame_samples
            if times is not None and frame < len(times) and times[frame] > 0:
                latencies.append(1000 * (now - times[frame]))

    listener = asyncio.create_task(listen())
    rng = np.random.default_rng(first + calls)
    tasks = []
    for i in range(first, first + calls):
        offset = int(rng.integers(0, len(audio) - RATE))
        tasks.append(asyncio.create_task(_call(
            urls[i % len(urls)], f"{prefix}-{i}", np.roll(audio, -offset), duration_s=duration_s,
            frame_ms=frame_ms, sent_at=sent_at, summary=summary)))
        await asyncio.sleep(ramp_s / calls)  # spread call starts over the ramp
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)  # let the last results arrive on pub/sub
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    await pubsub.aclose()
    await client.aclose()
    return latencies, list(summary.values())


def _generator_process(args: dict) -> tuple[list[float], list[dict]]:
    """One load-generator process of ``bench load --generators``."""
    audio = args.pop("audio")
    return aio.run(generate_load(audio=audio, **args))


async def run_load(urls: list[str], redis_url: str, audio: np.ndarray, *, calls: int,
                   duration_s: float, frame_ms: int, ramp_s: float,
                   servers: list[ServerProcess], generators: int = 1,
                   gpu: GpuSampler | None = None) -> LoadResult:
    """``calls`` calls spread round-robin over the nodes at ``urls``, from ``generators``
    processes (one simulated caller process cannot feed thousands of calls)."""
    for server in servers:
        server.cpu_since_mark()
        server.loop_cpu_since_mark()
        server.parent_cpu_since_mark()
    host_busy = host_cpu_seconds()
    if gpu is not None:
        gpu.start()
    started = time.monotonic()
    prefix = f"bench-{calls}"
    if generators <= 1:
        latencies, summaries = await generate_load(
            urls, redis_url, audio, calls=calls, prefix=prefix, duration_s=duration_s,
            frame_ms=frame_ms, ramp_s=ramp_s)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        shares = [calls // generators + (1 if g < calls % generators else 0)
                  for g in range(generators)]
        firsts = [sum(shares[:g]) for g in range(generators)]
        # Each generator its own prefix, so it subscribes to its own calls' results only
        # (one pattern for all would make Redis send every result to every generator).
        jobs = [{"urls": urls, "redis_url": redis_url, "audio": audio, "calls": n,
                 "first": f, "prefix": f"{prefix}-g{g}", "duration_s": duration_s,
                 "frame_ms": frame_ms, "ramp_s": ramp_s}
                for g, (n, f) in enumerate(zip(shares, firsts, strict=True)) if n]
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = await asyncio.gather(*[loop.run_in_executor(pool, _generator_process, job)
                                           for job in jobs])
        latencies = [x for lat, _ in parts for x in lat]
        summaries = [x for _, summ in parts for x in summ]
    elapsed = time.monotonic() - started
    busy, total = (b - a for a, b in zip(host_busy, host_cpu_seconds(), strict=True))
    cpu_readings = [server.cpu_seconds_since_mark() for server in servers]
    cpu = sum(100 * cpu_s / wall for wall, cpu_s in cpu_readings)
    parent_cpu = sum(server.parent_cpu_since_mark() for server in servers)
    loop_cpu_s = sum(server.loop_cpu_since_mark() for server in servers)
    rss = sum(server.rss_mb() for server in servers)
    ended = [s for s in summaries if s.get("type") == "ended"]
    result = LoadResult(calls=calls, duration_s=round(elapsed, 1), frame_ms=frame_ms)
    result.windows = sum(s["scored"] for s in ended)
    result.windows_per_s = round(result.windows / max(duration_s, 1e-9), 1)
    result.dropped = sum(s["dropped"] for s in ended)
    result.refused = calls - len(ended)
    result.refusals = refusal_reasons(summaries, calls)
    late = [s["sender_late_s"] for s in ended if "sender_late_s" in s]
    if late:
        result.sender_late_p95_ms = round(1000 * float(np.percentile(late, 95)), 1)
        result.sender_late_max_ms = round(1000 * max(late), 1)
    if latencies:
        q = np.percentile(latencies, [50, 95, 99])
        result.p50_ms, result.p95_ms, result.p99_ms = (round(float(v), 1) for v in q)
        result.max_ms = round(max(latencies), 1)
    result.server_cpu_pct = round(cpu, 1)
    result.server_loop_cpu_pct = round(100 * loop_cpu_s / max(elapsed, 1e-9), 1)
    all_windows = sum(s["windows"] for s in ended)
    result.loop_ms_per_window = round(1000 * loop_cpu_s / max(all_windows, 1), 3)
    result.server_ms_per_window = round(
        1000 * sum(cpu_s for _, cpu_s in cpu_readings) / max(all_windows, 1), 3)
    result.server_rss_mb = round(rss, 1)
    result.server_parent_cpu_pct = round(parent_cpu, 1)
    result.host_cpu_busy_pct = round(100 * busy / max(total, 1e-9), 1)
    if gpu is not None:
        result.gpu_util_pct, result.gpu_memory_mb = gpu.stop()
    result.latencies = latencies
    return result


def refusal_reasons(summaries: list[dict], calls: int) -> dict[str, int]:
    """How many calls did not end, by reason (most first)."""
    reasons: dict[str, int] = {}
    for s in summaries:
        if s.get("type") == "ended":
            continue
        if s.get("type") == "error":
            reason = f"server error {s.get('code', '?')}"
        elif "error" in s:
            reason = str(s["error"])[:120]
        else:
            reason = "closed without the call's summary"
        reasons[reason] = reasons.get(reason, 0) + 1
    if calls > len(summaries):
        reasons["no answer at all"] = calls - len(summaries)
    return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host so far, from /proc/stat (all cores)."""
    with contextlib.suppress(OSError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")
    return 0.0, 0.0


class GpuSampler:
    """GPU utilisation and memory during a run, from ``nvidia-smi`` once a second."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        import shutil

        return shutil.which("nvidia-smi") is not None

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=10).stdout.strip().splitlines()
            if out:
                util, memory = (float(x) for x in out[0].split(","))
                self.samples.append((util, memory))

    def stop(self) -> tuple[float | None, float | None]:
        """(mean utilisation %, peak memory MB) of the run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self.samples:
            return None, None
        return (round(float(np.mean([u for u, _ in self.samples])), 1),
                max(m for _, m in self.samples))


def py_spy() -> str:
    """The py-spy sampler's executable (beside this Python's, or on the PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--sample needs the py-spy sampler: pip install py-spy")
    return found


class LoopSampler:
    """py-spy sampling one process's stacks for ``seconds``, after ``delay_s`` (the calls'
    ramp), into ``out`` as raw collapsed stacks.

    With native frames, which py-spy reads only by pausing the process for each sample: its
    Python-only stacks of a uvloop process end in ``Runner.run`` for most samples (68-89 % on
    this project's 2-core machine), where ``perf`` finds the time in the interpreter running
    Python code, not in uvloop (5 %); unwound natively they name the Python code, and agree
    with cProfile's groups.
    """

    def __init__(self, pid: int, out: Path, *, seconds: float, delay_s: float,
                 rate_hz: int = 100) -> None:
        self.command = [py_spy(), "record", "--pid", str(pid), "--duration",
                        str(max(1, int(seconds))), "--rate", str(rate_hz), "--native",
                        "--format", "raw", "--output", str(out)]
        self.delay_s = delay_s
        self.returncode: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self.delay_s)
        done = subprocess.run(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False)
        self.returncode = done.returncode
        if done.returncode:
            print(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}",
                  file=sys.stderr, flush=True)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def bench_load(*, calls: list[int], duration_s: float, frame_ms: int, data: Path,
               find_max: bool, p95_target_ms: float = 300.0, env: dict | None = None,
               nodes: int = 1, profile: Path | None = None, generators: int = 1,
               sample: Path | None = None) -> list[LoadResult]:
    """Run each call count in turn against ``nodes`` server processes sharing one Redis
    (CPU and RSS are their sums); with ``find_max``, keep raising the count until p95
    latency passes the target or windows are dropped. With ``sample``, py-spy samples the
    first server's event-loop process (see :meth:`ServerProcess.loop_pid`) while the first
    count runs, after its ramp, into that file."""
    if sample is not None:
        if find_max:
            raise ValueError("--sample and --find-max: a sampled count is not judged, so it "
                             "cannot steer the search; sample a run of its own")
        py_spy()  # missing: say so before anything starts
    audio = load_corpus_audio(data)
    # This process's calls (one generator); its children (servers, generators) inherit it.
    aio.raise_open_file_limit()
    results: list[LoadResult] = []
    with EmbeddedRedis(persist=False) as redis_server:
        servers = [ServerProcess(redis_url=redis_server.url, port=free_port(),
                                 extra_env={**(env or {}), "CALLMON_NODE": f"bench-node-{i}"},
                                 profile=profile if i == 0 else None)
                   for i in range(nodes)]
        try:
            for server in servers:
                server.wait_ready()
            urls = [f"ws://127.0.0.1:{server.port}/v1/stream" for server in servers]
            gpu = GpuSampler() if GpuSampler.available() else None
            counts = list(calls)
            ramp_s = min(5.0, duration_s / 4)
            sampler = None
            if sample is not None:
                sampler = LoopSampler(servers[0].loop_pid(), sample, delay_s=ramp_s + 1,
                                      seconds=duration_s - ramp_s - 2)
            while counts:
                n = counts.pop(0)
                result = aio.run(run_load(urls, redis_server.url, audio, calls=n,
                                           duration_s=duration_s, frame_ms=frame_ms,
                                           ramp_s=ramp_s, servers=servers,
                                           generators=generators, gpu=gpu))
                if sampler is not None:
                    sampler.join(timeout_s=30)
                    sampler = None
                    result.sampled = True
                results.append(result)
                print(format_row(result), flush=True)
                ok = result.held(p95_target_ms)
                if find_max and ok and not counts:
                    counts.append(int(n * 1.25) if n >= 100 else n + 25)
                if find_max and not ok:
                    break
        finally:
            for server in servers:
                server.stop()
    return results


HEADER = ("| calls | windows/s | p50 ms | p95 ms | p99 ms | max ms | dropped | refused | "
          "server CPU % | of it event loop % | loop ms per window | server ms per window | "
          "server RSS MB | "
          "sender late p95 / max ms | host CPU busy % |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: LoadResult) -> str:
    return (f"| {r.calls} | {r.windows_per_s} | {r.p50_ms} | {r.p95_ms} | {r.p99_ms} | "
            f"{r.max_ms} | {r.dropped} | {r.refused} | {r.server_cpu_pct} | "
            f"{r.server_loop_cpu_pct} | {r.loop_ms_per_window} | {r.server_ms_per_window} | "
            f"{r.server_rss_mb} | "
            f"{r.sender_late_p95_ms} / {r.sender_late_max_ms} | {r.host_cpu_busy_pct} |")


#: Where the event loop's time goes. A function of these groups keeps its own time; what it
#: spends in generic code (numpy, built-ins, JSON, dataclasses) counts for it too.
PROFILE_GROUPS = (
    ("voice gate", ("windowing.py:speech_ratio", "windowing.py:_not_a_voice",
                    "windowing.py:_measure", "windowing.py:_spans", "windowing.py:_verdict",
                    "windowing.py:top_bins_share", "windowing.py:percentile")),
    ("resampling (soxr)", ("soxr",)),
    ("windowing", ("streamer/windowing.py",)),
    ("websocket framing and handshake", ("websockets/",)),
    ("ingest adapters, limits and audio decoding", ("streamer/ingest/", "streamer/protocol.py",
                                                    "streamer/limits.py", "models/audio.py")),
    ("calls, scheduler, alerts", ("streamer/calls.py", "streamer/monitor.py",
                                  "streamer/scheduler.py", "streamer/alerts.py",
                                  "streamer/results.py", "streamer/schema.py")),
    ("Redis (client and publisher)", ("redis/", "streamer/publisher.py", "streamer/nodes.py")),
    ("asyncio and sockets", ("asyncio/", "selectors.py", "socket", "ssl.py", "_contextvars",
                             "uvloop")),
    # The profile covers the whole run: at a light load, imports are a good part of it.
    ("start-up (imports)", ("importlib",)),
)
#: Generic code: its time belongs to whoever called it (split by what each call cost), and
#: only where no caller is known to its own group.
GENERIC_GROUPS = (
    ("message serialisation (dataclasses, JSON)", ("json/", "_json", "dataclasses.py",
                                                   "copy.py")),
    ("numpy", ("numpy",)),
)


def _profile_group(where: str, groups) -> str | None:
    return next((g for g, keys in groups if any(k.lower() in where for k in keys)), None)


def profile_breakdown(path: Path) -> dict[str, float]:
    """Shares of the profiled event loop's busy time (idle waiting in the selector excluded)
    per group of :data:`PROFILE_GROUPS`.

    cProfile keeps each function's own time and, per caller, the part of it spent on that
    caller's calls. The own time of generic code (:data:`GENERIC_GROUPS`, and built-ins such as
    numpy's ufuncs and FFT) is passed up to its callers in those parts, until it reaches a
    function of a group: the voice gate's FFTs count as the voice gate, not as numpy (as they
    did when each function's own time went to its file's group: the gate showed as 1-2 % of
    the loop's time, and was its largest item of callmon's own).
    """
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]

    def where_of(func) -> str:
        filename, _, name = func
        return f"{filename}:{name}".lower()

    shares: dict = {}
    active: set = set()

    def share(func) -> dict[str, float]:
        """The groups ``func``'s own time belongs to, as fractions (a caller that is already
        being resolved, a recursion, is left out)."""
        if func in shares:
            return shares[func]
        where = where_of(func)
        group = _profile_group(where, PROFILE_GROUPS)
        generic = _profile_group(where, GENERIC_GROUPS)
        if group is not None:
            return {group: 1.0}
        if generic is None and func[0] != "~":  # Python code of no group: its own
            return {"other": 1.0}
        active.add(func)
        callers = {c: edge[2] for c, edge in stats[func][4].items()
                   if c not in active and c in stats and edge[2] > 0}
        weight = sum(callers.values())
        result: dict[str, float] = {}
        for caller, t in callers.items():
            for g, f in share(caller).items():
                result[g] = result.get(g, 0.0) + f * t / weight
        active.discard(func)
        shares[func] = result or {generic or "other": 1.0}
        return shares[func]

    totals: dict[str, float] = {}
    for func, (_, _, tottime, _, _) in stats.items():
        filename, _, name = func
        where = where_of(func)
        if "select" in name and ("selectors" in filename or "{method 'poll'" in where
                                 or "epoll" in where):
            continue  # waiting for input is not work
        for group, fraction in share(func).items():
            totals[group] = totals.get(group, 0.0) + tottime * fraction
    return _shares(totals)


def _shares(totals: dict[str, float]) -> dict[str, float]:
    """Each group's share of the total, largest first."""
    busy = sum(totals.values()) or 1.0
    return {g: round(t / busy, 4) for g, t in sorted(totals.items(), key=lambda kv: -kv[1])}


#: A frame of these is where a thread's event loop runs: samples without one are other threads.
LOOP_FRAMES = ("asyncio/runners.py:", "base_events.py:run_forever",
               "base_events.py:run_until_complete")
#: A sample ending in these waits for input (py-spy's native stacks keep waiting samples).
WAITING_FRAMES = ("epoll_wait", "epoll_pwait", "selectors.py:select")


def _spy_frame(frame: str) -> tuple[str, bool]:
    """py-spy's ``function (file:line)`` as cProfile's ``file:function`` (lower-cased), and
    whether it is Python code (native frames read ``symbol (library)``)."""
    name, _, location = frame.rpartition(" (")
    location = location.rstrip(")")
    file, _, line = location.rpartition(":")
    if line.isdigit() and file.endswith((".py", ">")):  # a module, or <frozen abc>, <string>
        return f"{file}:{name.rsplit('.', 1)[-1]}".lower(), True
    return f"{location}:{name}".lower(), False


def sampled_breakdown(path: Path) -> tuple[dict[str, float], int]:
    """Shares of an event loop's busy time per group of :data:`PROFILE_GROUPS`, from py-spy's
    raw collapsed stacks (``bench load --sample``), and how many samples they rest on.

    Each sample counts for the innermost frame of its stack that belongs to a group; generic
    code (numpy, JSON, built-ins, native code) for the nearest caller that does, as
    :func:`profile_breakdown` counts it; Python code of no group is "other". Python's cyclic
    garbage collector is a group of its own. Samples of other threads (the model's, a thread
    pool's), and samples waiting for input, are left out. Unlike cProfile, which slows every
    Python call and so inflates code made of many small ones, and needs the standard asyncio
    loop, a sampler sees each part at its own speed on the loop the server really runs, native
    code included (uvloop's socket work counts as asyncio's). The stacks must be native
    (:class:`LoopSampler`).
    """
    totals: dict[str, float] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_spy_frame(f) for f in stack.split(";")]
        if not any(any(k in where for k in LOOP_FRAMES) for where, _ in frames):
            continue
        if any(k in frames[-1][0] for k in WAITING_FRAMES):
            continue
        group = "other"
        for where, python in reversed(frames):
            if "gc_collect" in where:
                group = "garbage collection"
                break
            found = _profile_group(where, PROFILE_GROUPS)
            if found is not None:
                group = found
                break
            if python and _profile_group(where, GENERIC_GROUPS) is None:
                break  # Python code of no group: its own
        totals[group] = totals.get(group, 0.0) + int(count)
    return _shares(totals), int(sum(totals.values()))


def summarise(results: list[LoadResult], p95_target_ms: float = 300.0) -> str:
    good = [r.calls for r in results if r.held(p95_target_ms)]
    best = max(good) if good else 0
    text = f"largest call count with p95 < {p95_target_ms:g} ms and no drops: {best}"
    sampled = [r.calls for r in results if r.sampled]
    if sampled:
        text += (f" (not judged at {', '.join(map(str, sampled))}: py-spy paused the server "
                 f"to sample it)")
    late = [r.calls for r in results if r.sender_late_p95_ms >= SENDER_LATE_LIMIT_MS]
    if late:
        text += (f" (not measured at {', '.join(map(str, late))}: the load generators fell "
                 f"behind real time; more --generators, or a second host)")
    return text
