"""``callmon dashboard`` and ``callmon bench predict``; and the dashboard's place in
``callmon serve`` (:data:`dashboard.server.MOUNT`, with its own options)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from streamer.cli import COUNT, POSITIVE


def add_commands(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="run the supervisor dashboard alone on an existing Redis")
    p.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--dashboard-port", type=int, help="port (default 8000)")
    p.add_argument("--model", dest="model_path", help="model for /api/v1/predict")
    p.set_defaults(handler=_dashboard)

    p = bench.add_parser("predict", help="POST /api/v1/predict latency for a 10 s clip")
    p.add_argument("--repeats", type=COUNT, default=20)
    p.add_argument("--seconds", type=POSITIVE, default=10.0)
    p.add_argument("--data", default="../shared/data/ravdess")
    p.set_defaults(handler=_bench_predict)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The dashboard's options of ``callmon serve``."""
    p.add_argument("--dashboard-port", type=int, help="dashboard port (default 8000)")
    p.add_argument("--no-dashboard", action="store_true", help="ingest only")


def serve_mounts(args: argparse.Namespace) -> list:
    from dashboard.server import mount
    from dashboard.settings import OWN_FIELDS

    if getattr(args, "no_dashboard", False):
        return []
    return [mount(**{k: v for k, v in vars(args).items() if k in OWN_FIELDS and v is not None})]


def _dashboard(args: argparse.Namespace) -> int:
    from dashboard.server import run_dashboard
    from dashboard.settings import DashboardSettings
    from streamer.cli import settings_from

    asyncio.run(run_dashboard(settings_from(args, DashboardSettings)))
    return 0


def _bench_predict(args: argparse.Namespace) -> int:
    from dashboard.bench import bench_predict

    print(json.dumps(bench_predict(data=Path(args.data), repeats=args.repeats,
                                   seconds=args.seconds), indent=2))
    return 0
