"""During a ``bench load`` run (docs/results/gpu_device_run.sh): per-thread CPU of the
``serve`` parent (the model process) and two of its workers, and py-spy stacks of them, once
the row named by the third argument has been printed (the next call count is then running).
Each worker's event loop is then summarised as ``bench load --sample`` does (native stacks:
py-spy's Python-only stacks of a uvloop process end in ``Runner.run`` for most samples).
Into OUT (a device run brings back 8 files): watch.json (threads' CPU, the loops' shares)
and the first worker's raw stacks, spy_worker0.txt.

    gpu_device_watch.py OUT LOG ROW DELAY_S SECONDS [PY_SPY]
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from streamer.tools.bench import sampled_breakdown, thread_cpu  # noqa: E402

out, log, after_row = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
delay, secs = float(sys.argv[4]), int(sys.argv[5])
spy = sys.argv[6] if len(sys.argv) > 6 else "py-spy"


def serve_pids():
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                if b"callmon_cli" in cmd and b"serve" in cmd:
                    ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    pids.append((int(p.name), ppid))
            except OSError:
                pass
    mine = {pid for pid, _ in pids}
    parents = [pid for pid, ppid in pids if ppid not in mine]
    workers = [pid for pid, ppid in pids if ppid in mine]
    return parents, workers


deadline = time.time() + 900
while after_row not in log.read_text(errors="replace") and time.time() < deadline:
    time.sleep(0.5)
time.sleep(delay)
parents, workers = serve_pids()
targets = [("parent", parents[0])] + [(f"worker{i}", w) for i, w in enumerate(workers[:2])]
before = {name: thread_cpu(pid) for name, pid in targets}
raw = Path(tempfile.mkdtemp(prefix="callmon-watch-"))
t0 = time.time()
spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(secs), "--rate", "100",
                           "--native", "--format", "raw", "--output", str(raw / f"spy_{name}.txt")],
                          stdout=subprocess.DEVNULL, stderr=sys.stderr)
         for name, pid in targets]
time.sleep(secs)
after = {name: thread_cpu(pid) for name, pid in targets}
wall = time.time() - t0
for s in spies:
    try:
        s.wait(timeout=secs + 30)
    except subprocess.TimeoutExpired:
        s.kill()
report = {"wall_s": round(wall, 1), "workers": len(workers), "threads": {}, "loops": {}}
for name, _pid in targets:
    report["threads"][name] = {
        f"{tid} {tname}": round(100 * (cpu - before[name].get(tid, (tname, 0.0))[1]) / wall, 1)
        for tid, (tname, cpu) in sorted(after[name].items())}
    stacks = raw / f"spy_{name}.txt"
    if name != "parent" and stacks.exists():
        shares, samples = sampled_breakdown(stacks)
        report["loops"][name] = {"samples": samples, "shares": shares}
(out / "watch.json").write_text(json.dumps(report, indent=2) + "\n")
if (raw / "spy_worker0.txt").exists():
    shutil.copy(raw / "spy_worker0.txt", out / "spy_worker0.txt")
print("watch done", flush=True)
