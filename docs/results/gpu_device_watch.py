"""During a ``bench load`` run (docs/results/gpu_device_run.sh): per-thread CPU of the
``serve`` parent (the model process) and two of its workers, and py-spy stacks of them, once
the row named by the third argument has been printed (the next call count is then running).

    gpu_device_watch.py OUT LOG ROW DELAY_S SECONDS [PY_SPY]
"""
import os
import subprocess
import sys
import time
from pathlib import Path

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

def threads(pid):
    res = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (t / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            f = stat.rsplit(")", 1)[1].split()
            res[int(t.name)] = (name, (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))
        except OSError:
            pass
    return res

deadline = time.time() + 900
while after_row not in log.read_text(errors="replace") and time.time() < deadline:
    time.sleep(0.5)
time.sleep(delay)
parents, workers = serve_pids()
targets = [("parent", parents[0])] + [(f"worker{i}", w) for i, w in enumerate(workers[:2])]
before = {name: threads(pid) for name, pid in targets}
t0 = time.time()
spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(secs), "--rate", "200",
                           "--nonblocking", "--threads", "--idle", "--format", "raw",
                           "--output", str(out / f"spy_{name}.txt")],
                          stdout=subprocess.DEVNULL, stderr=sys.stderr)
         for name, pid in targets]
time.sleep(secs)
after = {name: threads(pid) for name, pid in targets}
wall = time.time() - t0
with open(out / "threads.txt", "w") as f:
    f.write(f"workers {len(workers)}, wall {wall:.1f} s\n")
    for name, pid in targets:
        for tid, (tname, cpu) in sorted(after[name].items()):
            prev = before[name].get(tid, (tname, 0.0))[1]
            f.write(f"{name} {pid} {tid} {tname}: {100 * (cpu - prev) / wall:.1f} %\n")
for s in spies:
    try:
        s.wait(timeout=secs + 30)
    except subprocess.TimeoutExpired:
        s.kill()
print("watch done", flush=True)
