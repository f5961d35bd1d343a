"""``callmon``: one command, with a subcommand per job. Each package registers its own
subcommands; heavy imports (torch, onnxruntime) happen only inside the chosen handler."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def build_parser() -> argparse.ArgumentParser:
    """The composition root: the only place that knows every package. The dashboard mounts
    itself on ``serve`` from here, so ``streamer`` never imports ``dashboard``."""
    from dashboard.cli import add_commands as add_dashboard_commands
    from dashboard.cli import add_serve_arguments, serve_mounts
    from streamer.cli import add_commands as add_streamer_commands
    from trainer.cli import add_commands as add_trainer_commands

    parser = argparse.ArgumentParser(
        prog="callmon", description="Real-time speech-emotion monitor for call centres."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench", metavar="WHAT", required=True
    )
    add_streamer_commands(sub, bench, serve_extensions=[(add_serve_arguments, serve_mounts)])
    add_dashboard_commands(sub, bench)
    add_trainer_commands(sub, bench)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C would be."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # serve --workers passes them on
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from streamer.logfilter import install

    install()  # a storm of one repeated error line must not fill the disk
    level = logging.DEBUG if args.verbose else logging.INFO
    for name in ("models", "trainer", "streamer", "dashboard"):
        logging.getLogger(name).setLevel(level)
    # SIGTERM (a supervisor, `timeout`, CI) unwinds like Ctrl-C, so that what a command
    # started is stopped on the way out: a benchmark's serve and Redis children outlived a
    # terminated `bench soak`. `serve` installs its own graceful handler while it runs.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.handler(args) or 0)
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        if args.verbose:
            raise
        print(f"callmon {args.command}: error: {_reason(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Connection and protocol failures of the Redis and websocket clients: one line.
        if args.verbose or not type(exc).__module__.startswith(("redis", "websockets")):
            raise
        print(f"callmon {args.command}: error: {_reason(exc)}", file=sys.stderr)
        return 2


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({exc}): is the server running and the address right?"
    if type(exc).__module__.startswith("pydantic") and hasattr(exc, "errors"):
        # A setting from a flag or CALLMON_* that its type refuses: one line, not pydantic's
        # four with a documentation link.
        return "; ".join(f"bad setting {'.'.join(map(str, e['loc']))}={e.get('input')!r}: "
                         f"{e['msg']}" for e in exc.errors())
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
