"""Calls held on this machine by each model, the models alternating, several rounds.

``PYTHONPATH=. python docs/results/bench_load_models.py --models NAME=PATH,... [--calls 85,100,115]
[--rounds 2] [--out docs/results/bench_load_models.json]`` runs ``callmon bench load`` once per
model and round with ``CALLMON_MODEL_PATH`` set to that model (a shipped name or a model folder),
and writes every row plus how many calls each round held: the most calls tried with p95 under
300 ms and no window dropped. Alternating the models spreads the machine's drift over all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

P95_LIMIT_MS = 300.0


def held(rows: list[dict]) -> int:
    """The most calls of a round held with p95 under the limit and nothing dropped (0: none)."""
    return max((r["calls"] for r in rows if r["p95_ms"] < P95_LIMIT_MS and r["dropped"] == 0),
               default=0)


def run_round(path: str, calls: str, duration: float, frame_ms: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        env = dict(os.environ, CALLMON_MODEL_PATH=path)
        subprocess.run([sys.executable, "callmon_cli.py", "bench", "load", "--calls", calls,
                        "--frame-ms", str(frame_ms), "--duration", str(duration),
                        "--out", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def summary(report: dict) -> str:
    top = max(int(c) for c in report["calls"].split(","))
    parts = []
    for name, rounds in report["rounds"].items():
        p95 = [r["p95_ms"] for rd in rounds for r in rd["rows"] if r["calls"] == top]
        parts.append(f"{name} {' and '.join(map(str, report['held_per_round'][name]))} "
                     f"(p95 at {top} calls {', '.join(f'{v:g}' for v in p95)} ms)")
    return (f"Calls held ({report['machine']}; p95 under {P95_LIMIT_MS:g} ms and nothing "
            f"dropped; calls tried {report['calls']}): " + "; ".join(parts) + ".")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, metavar="NAME=PATH,...")
    p.add_argument("--calls", default="85,100,115")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--frame-ms", type=int, default=20)
    p.add_argument("--out", default="docs/results/bench_load_models.json")
    args = p.parse_args()
    models = dict(m.split("=", 1) for m in args.models.split(","))
    report: dict = {
        "machine": f"{os.cpu_count()}-core CPU, no GPU; load generator on the same cores; "
                   f"real-time mono calls, {args.frame_ms} ms frames, 1 s hop",
        "command": f"CALLMON_MODEL_PATH=<model> callmon bench load --calls {args.calls} "
                   f"--frame-ms {args.frame_ms} --duration {args.duration:g}, the models "
                   f"alternating, {args.rounds} rounds",
        "models": models, "calls": args.calls, "rounds": {m: [] for m in models}}
    for round_ in range(1, args.rounds + 1):
        for name, path in models.items():
            rows = run_round(path, args.calls, args.duration, args.frame_ms)
            report["rounds"][name].append({"round": round_, "rows": rows})
            print(f"round {round_} {name}: held {held(rows)}", flush=True)
    report["held_per_round"] = {m: [held(rd["rows"]) for rd in rds]
                                for m, rds in report["rounds"].items()}
    report["summary"] = summary(report)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(report["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
