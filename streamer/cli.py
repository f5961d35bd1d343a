"""``callmon serve``, ``stream``, ``alerts`` and ``bench load``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from models.outputs import report_file
from streamer import aio

#: What else runs inside ``serve``: its options, and the mounts chosen from them (the
#: dashboard registers itself here through the top-level ``callmon`` command).
ServeExtension = tuple[Callable[[argparse.ArgumentParser], None],
                       Callable[[argparse.Namespace], list]]


def number(kind: type[int] | type[float] = float, *, above: float | None = None,
           at_least: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` that refuses a value out of range before anything starts (a
    zero speed or a negative soak length would otherwise hang, a zero call count would
    benchmark nothing)."""
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}, got {text}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}, got {text}")
        return value

    return convert


POSITIVE = number(float, above=0)
COUNT = number(int, at_least=1)


def counts(text: str) -> list[int]:
    """``--calls 50,100``: one or more counts, each at least 1."""
    return [int(COUNT(part.strip())) for part in text.split(",")]


def add_commands(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction, *,
                 serve_extensions: Sequence[ServeExtension] = ()) -> None:
    p = sub.add_parser("serve", help="run the monitor: ingest, model, alerts, Redis")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="websocket ingest port (default 8080)")
    p.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL, else an embedded Redis)")
    p.add_argument("--model", dest="model_path",
                   help="whisper-tiny (the shipped default); whisper-base (shipped too: more "
                        "accurate, slower, int8 on CPU only); or a model directory or .onnx")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"],
                   help="inference backend (default auto: torch on CUDA when available, else "
                        "ONNX Runtime)")
    p.add_argument("--hop", dest="hop_s", type=float, help="seconds between windows (default 1)")
    p.add_argument("--max-calls", type=int)
    p.add_argument("--ingest-token", help="require this bearer token on ingest")
    p.add_argument("--insecure-ingest", action="store_true", default=None,
                   help="allow ingest beyond loopback without a token (auth in front of callmon)")
    p.add_argument("--audiosocket-port", type=int,
                   help="also accept Asterisk AudioSocket calls on this TCP port (default off)")
    p.add_argument("--workers", type=int,
                   help="ingest processes sharing the ports, feeding one model process "
                        "(default 1: one process)")
    for add_arguments, _ in serve_extensions:
        add_arguments(p)
    p.set_defaults(handler=functools.partial(_serve, extensions=tuple(serve_extensions)))

    p = sub.add_parser("stream", help="stream a file or the microphone to a callmon server")
    p.add_argument("file", nargs="?", help="audio file (anything soundfile reads; stereo → 2 roles)")
    p.add_argument("--mic", action="store_true", help="stream the default microphone")
    p.add_argument("--url", default="ws://127.0.0.1:8080",
                   help="server base URL (audiosocket: tcp://HOST:PORT)")
    p.add_argument("--protocol", default="native",
                   choices=["native", "twilio", "audiohook", "audiofork", "audiosocket"],
                   help="speak callmon's own protocol or a platform's (the platforms' results "
                        "go to Redis only: watch them with callmon alerts or the dashboard)")
    p.add_argument("--call-id")
    p.add_argument("--rate", type=COUNT, default=16000, help="sample rate to send (native)")
    p.add_argument("--encoding", default="pcm_s16le",
                   choices=["pcm_s16le", "f32le", "mulaw", "alaw"])
    p.add_argument("--fast", action="store_true",
                   help="send as fast as the server accepts (its CALLMON_MAX_SPEED after its "
                        "head start, which it announces; 4x after 10 s by default)")
    p.add_argument("--speed", type=POSITIVE, default=1.0,
                   help="pace at this multiple of real time (native: at most the server's pace, "
                        "which it announces)")
    p.add_argument("--token", help="ingest bearer token")
    p.add_argument("--agent", help="the agent's name (shown on the dashboard's call card)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="call metadata, e.g. --metadata queue=billing (repeatable)")
    p.set_defaults(handler=_stream)

    p = sub.add_parser("alerts", help="print alerts and call events as they happen")
    p.add_argument("--redis-url", default=None,
                   help="default: $REDIS_URL, else the Redis of a callmon serve on this "
                        "machine, else redis://127.0.0.1")
    p.add_argument("--since", default=None,
                   help="replay from the alert log first: 0 for everything, a duration "
                        "like 10m, or a stream id (the entries after it: the last one seen)")
    p.add_argument("--json", action="store_true", help="print raw JSON lines")
    p.set_defaults(handler=_alerts)

    p = bench.add_parser("load", help="N concurrent real-time calls against a callmon server")
    p.add_argument("--calls", type=counts, default="100",
                   help="call counts to run, comma-separated (e.g. 50,100,150)")
    p.add_argument("--duration", type=POSITIVE, default=40.0, help="seconds of audio per call")
    p.add_argument("--frame-ms", type=COUNT, default=20, help="audio per websocket message")
    p.add_argument("--find-max", action="store_true",
                   help="keep adding calls until p95 >= 300 ms or windows are dropped")
    p.add_argument("--nodes", type=COUNT, default=1,
                   help="streamer processes sharing one Redis; calls spread round-robin")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="ONNX Runtime threads per node (CALLMON_THREADS; default 2)")
    p.add_argument("--workers", type=COUNT, default=None,
                   help="ingest processes per node (serve --workers; CPU and RSS summed)")
    p.add_argument("--generators", type=COUNT, default=1,
                   help="load-generator processes (one cannot feed thousands of calls)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default=None,
                   help="the node's inference backend (CALLMON_BACKEND)")
    p.add_argument("--data", default="../shared/data/ravdess", help="speech to stream")
    p.add_argument("--out", type=report_file, default=None, help="also write the figures as JSON")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="run the (first) server under cProfile, write its profile to FILE and "
                        "print where the event loop's time goes")
    p.add_argument("--sample", default=None, metavar="FILE",
                   help="sample the (first) server's event loop (its first worker under "
                        "--workers) with py-spy while the first call count runs, write the "
                        "raw stacks to FILE and print where the loop's time goes")
    p.set_defaults(handler=_bench_load)

    p = bench.add_parser("soak", help="calls starting and ending continuously for a long time")
    p.add_argument("--calls", type=COUNT, default=100, help="concurrent calls to keep going")
    p.add_argument("--minutes", type=POSITIVE, default=30.0, help="length of the soak")
    p.add_argument("--overload", action="store_true",
                   help="instead: calls for 1/6 of the time, twice as many for 1/2, then calls "
                        "again for 1/3 (recovery)")
    p.add_argument("--max-calls", type=COUNT, default=None,
                   help="the server's CALLMON_MAX_CALLS (default: no limit)")
    p.add_argument("--mean-call-s", type=POSITIVE, default=60.0, help="mean call length")
    p.add_argument("--interval-s", type=POSITIVE, default=60.0, help="seconds per printed row")
    p.add_argument("--frame-ms", type=COUNT, default=20)
    p.add_argument("--data", default="../shared/data/ravdess")
    p.add_argument("--out", type=report_file, default=None,
                   help="also write the rows and verdict as JSON")
    p.set_defaults(handler=_bench_soak)
    p = sub.add_parser(
        "calibrate", help="temperatures and alert thresholds chosen on the validation speakers "
                          "of cross-validation folds, measured on their test speakers")
    p.add_argument("--runs", required=True,
                   help="comma-separated fold folders written by callmon train (model.pt)")
    p.add_argument("--data", default="../shared/data/ravdess,../shared/data/emodb",
                   help="comma-separated corpus folders the folds were trained on")
    p.add_argument("--target-fa-per-hour", type=number(float, at_least=0), default=1.0,
                   help="false alerts per hour of calm speech allowed per kind on validation")
    p.add_argument("--calm-minutes", type=POSITIVE, default=4.0)
    p.add_argument("--threads", type=COUNT, default=1)
    p.add_argument("--out", type=report_file, default="calibration.json")
    p.add_argument("--card", default=None,
                   help="a model folder whose card takes the temperature, alert rules and "
                        "figures (MODEL_CARD.md rendered again; its weights are not touched)")
    p.set_defaults(handler=_calibrate)

    p = bench.add_parser(
        "alerts", help="false alerts per hour of calm speech, detection and time to alert, "
                       "on held-out speakers, through the server's windowing, gate and alerts")
    p.add_argument("--data", default="../shared/data/ravdess,../shared/data/emodb",
                   help="comma-separated corpus folders (manifest.csv or a known layout)")
    p.add_argument("--model", default=None, help="model directory or .onnx (default: shipped)")
    p.add_argument("--variant", default=None, help="int8, fp16 or fp32 (default: int8 on CPU)")
    p.add_argument("--telephone", action="store_true",
                   help="every call through an 8 kHz μ-law telephone channel")
    p.add_argument("--speakers", default=None,
                   help="comma-separated corpus/speaker ids (default: every speaker the model "
                        "never trained or validated on)")
    p.add_argument("--calm-minutes", type=POSITIVE, default=4.0, help="length of each calm call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=COUNT, default=2)
    p.add_argument("--out", type=report_file, default="bench_alerts.json",
                   help="JSON report (a PNG beside it)")
    p.set_defaults(handler=_bench_alerts)

    p = bench.add_parser(
        "compare", help="two alert reports (callmon calibrate or bench alerts) on the same "
                        "speakers and calls: each figure's difference with its bootstrap "
                        "interval over speakers")
    p.add_argument("first", help="the reference report (JSON); several runs of one recipe "
                                 "(seeds, on the same calls) comma-separated: their mean, and "
                                 "the bootstrap resamples them too")
    p.add_argument("second", help="the report compared with it (JSON; or several, likewise)")
    p.add_argument("--names", default=None,
                   help="what to call the two in the table (comma-separated; default: the "
                        "file names)")
    p.add_argument("--channel", default="clean,telephone",
                   help="comma-separated channels of a calibrate report to compare (a bench "
                        "alerts report holds one channel: that one is compared)")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws")
    p.add_argument("--out", type=report_file, default=None, help="also write the comparison as JSON")
    p.set_defaults(handler=_bench_compare)


def _serve(args: argparse.Namespace, *, extensions: Sequence[ServeExtension]) -> int:
    from streamer.service import run

    mounts = [mount for _, choose in extensions for mount in choose(args)]
    settings = settings_from(args)
    aio.raise_open_file_limit()
    if settings.workers > 1:
        from streamer.workers import run_workers

        argv = list(getattr(args, "argv", None) or sys.argv[1:])
        argv = argv[argv.index("serve") + 1:] if "serve" in argv else argv
        aio.run(run_workers(settings, argv, mounts=mounts), settings.loop)
        return 0
    aio.run(run(settings, mounts=mounts), settings.loop)
    return 0


def settings_from(args: argparse.Namespace, cls=None):
    """Settings (``cls``: a subclass such as the dashboard's) from the environment, under the
    options given on the command line."""
    from streamer.settings import Settings

    cls = cls or Settings
    overrides = {k: v for k, v in vars(args).items() if k in cls.model_fields and v is not None}
    return cls(**overrides)


def _stream(args: argparse.Namespace) -> int:
    from streamer.tools.client import (
        FASTEST,
        format_result,
        load_for_streaming,
        stream_native,
        stream_twilio,
    )

    def show(data: dict) -> None:
        line = format_result(data)
        if line:
            print(line, flush=True)

    base = args.url.rstrip("/")
    metadata = _metadata(args.metadata, agent=args.agent)
    if args.mic:
        from streamer.tools.mic import stream_microphone

        return asyncio.run(stream_microphone(base + "/v1/stream", rate=args.rate,
                                             call_id=args.call_id, token=args.token,
                                             on_message=show, metadata=metadata))
    if not args.file:
        raise ValueError("give an audio FILE or --mic")
    speed = FASTEST if args.fast else args.speed
    if args.protocol in ("audiohook", "audiofork", "audiosocket"):
        return _stream_platform(args, base, speed, metadata)
    if args.protocol == "twilio":
        audio = load_for_streaming(args.file, rate=8000)
        outcome = asyncio.run(stream_twilio(base + "/v1/twilio", audio, call_id=args.call_id,
                                            speed=speed, token=args.token,
                                            on_message=show, custom_parameters=metadata))
    else:
        rate = 8000 if args.encoding in ("mulaw", "alaw") else args.rate
        audio = load_for_streaming(args.file, rate=rate)
        outcome = asyncio.run(stream_native(base + "/v1/stream", audio, rate=rate,
                                            call_id=args.call_id, encoding=args.encoding,
                                            speed=speed, token=args.token,
                                            on_message=show, metadata=metadata,
                                            on_notice=lambda line: print(line, file=sys.stderr)))
    if outcome.errors:
        print(f"server refused: {outcome.errors[-1]['message']}", file=sys.stderr)
        return 1
    if outcome.ended is None:
        print(f"the connection closed before the call ended ({_closed(outcome)}): the server "
              "stopped or the network failed", file=sys.stderr)
        return 1
    return 0


def _closed(outcome) -> str:
    """How a websocket closed, as a person reads it."""
    if outcome.close_code in (None, 1006):
        return "no close frame"
    return f"code {outcome.close_code}" + (f" {outcome.close_reason}" if outcome.close_reason
                                           else "")


def _stream_platform(args: argparse.Namespace, base: str, speed: float,
                     metadata: dict[str, str]) -> int:
    """Stream as Genesys AudioHook, FreeSWITCH mod_audio_fork or Asterisk AudioSocket; these
    platforms get no results back, so say what the server answered."""
    import uuid
    from urllib.parse import urlsplit

    from streamer.tools.client import load_for_streaming
    from streamer.tools.platforms import stream_audiofork, stream_audiohook, stream_audiosocket

    call_id = args.call_id or str(uuid.uuid4())
    rate = 16000 if args.protocol == "audiofork" and args.rate >= 16000 else 8000
    if args.protocol == "audiohook":
        audio = load_for_streaming(args.file, rate=8000)
        outcome = asyncio.run(stream_audiohook(base + "/v1/audiohook", audio,
                                               conversation_id=call_id, speed=speed,
                                               api_key=args.token or ""))
        errors = [m["parameters"].get("info", "") for m in outcome.of_type("disconnect")]
    elif args.protocol == "audiofork":
        audio = load_for_streaming(args.file, rate=rate)
        mix = "stereo" if audio.shape[1] == 2 else "mono"
        token = f"&token={args.token}" if args.token else ""
        url = f"{base}/v1/audiofork?mix={mix}&rate={rate // 1000}k&call_id={call_id}{token}"
        outcome = asyncio.run(stream_audiofork(url, audio, rate=rate, call_id=call_id,
                                               metadata=metadata, speed=speed))
        errors = [m["data"]["message"] for m in outcome.of_type("error")]
    else:
        where = urlsplit(base)
        if where.scheme != "tcp" or not where.hostname or not where.port:
            raise ValueError("AudioSocket needs --url tcp://HOST:PORT (callmon serve "
                             "--audiosocket-port PORT)")
        try:
            uuid.UUID(call_id)
        except ValueError:
            raise ValueError(f"AudioSocket calls are named by a UUID (Asterisk's ${{UUID()}}): "
                             f"--call-id {call_id!r} is not one") from None
        audio = load_for_streaming(args.file, rate=8000)
        if audio.shape[1] > 1:
            print("AudioSocket carries one channel: streaming the file's first (left) one",
                  file=sys.stderr)
        audio = audio[:, :1]
        outcome = asyncio.run(stream_audiosocket(where.hostname, where.port, audio,
                                                 call_uuid=call_id, speed=speed))
        errors = [m["payload"].decode(errors="replace") for m in outcome.messages
                  if isinstance(m, dict) and m.get("kind") == 0xFF]
    if errors:
        print(f"server refused: {errors[-1]}", file=sys.stderr)
        return 1
    if args.protocol == "audiohook" and not outcome.of_type("closed"):
        print(f"the connection closed before the session did ({_closed(outcome)}): the "
              "server stopped or the network failed", file=sys.stderr)
        return 1
    print(f"streamed {len(audio) / rate:.1f} s as "
          f"{args.protocol} call {call_id}; its windows and alerts are in Redis "
          "(callmon alerts, the dashboard)", flush=True)
    return 0


def _local_serve_redis() -> str | None:
    """The Redis of a ``callmon serve`` running on this machine (its runtime file)."""
    import os

    from streamer.settings import runtime_file

    try:
        info = json.loads(runtime_file().read_text())
        os.kill(int(info["pid"]), 0)  # still running?
        return str(info["redis_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _metadata(pairs: list[str], *, agent: str | None) -> dict[str, str]:
    """``["queue=billing"]`` and ``--agent`` → the start message's metadata."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--metadata takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    if agent:
        out["agent"] = agent
    return out


def _alerts(args: argparse.Namespace) -> int:
    import os

    from streamer.alerts_feed import follow_alerts

    url = args.redis_url or os.environ.get("REDIS_URL") or _local_serve_redis() \
        or "redis://127.0.0.1:6379/0"

    def show(data: dict) -> None:
        if args.json:
            print(json.dumps(data), flush=True)
            return
        try:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.get("ts", time.time())))
            if data["type"] == "alert":
                line = (f"{when} {data['state']:>7} {data['kind']:<11} call={data['call_id']} "
                        f"role={data['role']} score={data['score']:.2f} "
                        f"at={data['call_time_s']:.1f}s into the call id={data['id']}")
            else:
                line = (f"{when} {data['type']:>12} call={data['call_id']} "
                        + (f"reason={data.get('reason')}" if data.get("reason") else ""))
        except (KeyError, TypeError, ValueError, OverflowError, OSError):
            line = f"(not in the alert schema) {json.dumps(data)}"  # shown as it came
        print(line, flush=True)

    def status(line: str) -> None:
        print(f"callmon alerts: {line}", file=sys.stderr, flush=True)

    try:
        asyncio.run(follow_alerts(url, since=args.since, on_message=show, on_status=status))
    except KeyboardInterrupt:
        pass
    return 0


def _bench_load(args: argparse.Namespace) -> int:

    from streamer.tools.bench import (
        HEADER,
        bench_load,
        profile_breakdown,
        sampled_breakdown,
        summarise,
    )

    print(HEADER, flush=True)
    env = {k: str(v) for k, v in (("CALLMON_THREADS", args.threads),
                                  ("CALLMON_WORKERS", args.workers),
                                  ("CALLMON_BACKEND", args.backend)) if v}
    profile = Path(args.profile).resolve() if args.profile else None
    sample = Path(args.sample).resolve() if args.sample else None
    results = bench_load(calls=args.calls, duration_s=args.duration,
                         frame_ms=args.frame_ms, data=Path(args.data), find_max=args.find_max,
                         env=env, nodes=args.nodes, profile=profile,
                         generators=args.generators, sample=sample)
    print(summarise(results))
    rows: list | dict = [r.row() for r in results]
    report: dict = {}
    if profile is not None:
        report["event_loop_profile"] = profile_breakdown(profile)
        _print_shares("where the event loop's busy time goes (cProfile, main thread; numpy, "
                      "JSON and built-ins counted for the code calling them):",
                      report["event_loop_profile"])
    if sample is not None and sample.exists():
        shares, samples = sampled_breakdown(sample)
        report["event_loop_samples"] = {"samples": samples, "shares": shares}
        _print_shares(f"where the event loop's busy time goes (py-spy, {samples} samples of "
                      "the first count; numpy, JSON and native code counted for the code "
                      "calling them):", shares)
    if report:
        rows = {"runs": rows, **report}
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _print_shares(title: str, shares: dict[str, float]) -> None:
    print(title)
    for group, share in shares.items():
        print(f"  {group:<40} {100 * share:5.1f} %")


def _bench_soak(args: argparse.Namespace) -> int:

    from streamer.tools.soak import HEADER, bench_soak, format_interval, verdict

    n = args.calls
    total = 60 * args.minutes
    phases = ([(n, total / 6), (2 * n, total / 2), (n, total / 3)] if args.overload
              else [(n, total)])
    env = {"CALLMON_MAX_CALLS": str(args.max_calls)} if args.max_calls else None
    print(HEADER, flush=True)
    report = bench_soak(phases=phases, mean_call_s=args.mean_call_s, frame_ms=args.frame_ms,
                        interval_s=args.interval_s, data=Path(args.data), env=env,
                        on_interval=lambda i: print(format_interval(i), flush=True))
    figures = verdict(report)
    print(json.dumps(figures))
    if args.out:
        Path(args.out).write_text(json.dumps({**report.row(), "verdict": figures,
                                              "max_calls": args.max_calls}, indent=2) + "\n")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from streamer.tools.calibrate import calibrate_cv, write

    card = None
    if args.card:
        from models.card import ModelCard
        from streamer.alerts import alert_config_from

        if not (Path(args.card) / "model_card.json").is_file():
            raise ValueError(f"--card {args.card}: no model_card.json there (a folder written "
                             "by callmon export)")
        card = ModelCard.load(Path(args.card))
    report = calibrate_cv([Path(r) for r in args.runs.split(",") if r.strip()],
                          [d for d in args.data.split(",") if d.strip()],
                          target_fa_per_hour=args.target_fa_per_hour,
                          calm_minutes=args.calm_minutes, threads=args.threads,
                          compare=alert_config_from(card.alerts) if card else None,
                          card_config=(card.training or {}).get("config", {}) if card else None)
    write(report, Path(args.out))
    if card:
        from models.card_markdown import with_calibration
        from models.card_markdown import write as write_card

        card = with_calibration(card, report)
        card.save(Path(args.card))
        write_card(card, Path(args.card))
    summary = {"temperature": report["temperature"], "alerts": report["alerts"],
               "ece": [(f["test_window_ece_before"], f["test_window_ece_after"])
                       for f in report["folds"]],
               **{f"test_{ch}": {k: report["test"][ch]["overall"][k]
                                 for k in ("false_alerts_per_hour", "angry", "sad", "fearful")}
                  for ch in report["test"]}}
    print(json.dumps(summary, indent=2))
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    from streamer.tools.intervals import paired, paired_rows, per_speaker_blocks, report_channels

    sides = [[Path(p.strip()) for p in side.split(",") if p.strip()]
             for side in (args.first, args.second)]
    if not all(sides):
        raise ValueError("each side of the comparison needs a report")
    reports: list[list[dict]] = [[], []]
    for side, paths in zip(reports, sides, strict=True):
        for path in paths:
            try:
                side.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: cannot read a JSON report ({exc})") from exc
    names = ([n.strip() for n in args.names.split(",")] if args.names else
             [paths[0].stem + (f" ×{len(paths)}" if len(paths) > 1 else "") for paths in sides])
    if len(names) != 2:
        raise ValueError(f"--names needs two names, got {args.names!r}")
    if args.draws < 100:
        raise ValueError("--draws must be at least 100")
    channels = [c.strip() for c in args.channel.split(",") if c.strip()]
    if "test" not in reports[0][0]:
        # A bench alerts report holds one channel: its own (the others must be of the same).
        channels = report_channels(reports[0][0])
    compared: dict[str, dict] = {}
    for ch in channels:
        block = compared[ch] = paired([per_speaker_blocks(r, ch) for r in reports[0]],
                                      [per_speaker_blocks(r, ch) for r in reports[1]],
                                      draws=args.draws)
        runs = "" if block["runs"] == [1, 1] else (
            f", runs {block['runs'][0]} and {block['runs'][1]} (their means; the bootstrap "
            "resamples them too)")
        print(f"{ch} calls, {block['speakers']} speakers{runs}, second minus first:\n")
        print("\n".join(paired_rows(block, *names)) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"first": args.first, "second": args.second,
                                              "names": names, "channels": compared},
                                             indent=2) + "\n")
    return 0


def _bench_alerts(args: argparse.Namespace) -> int:
    from models import load_model
    from streamer.service import alert_config
    from streamer.settings import Settings
    from streamer.tools.alert_bench import (
        bench_alerts,
        format_report,
        load_corpora,
        write_report,
    )

    items = load_corpora([d for d in args.data.split(",") if d.strip()])  # before the model
    model = load_model(args.model, "cpu", variant=args.variant, threads=args.threads)
    # The alert rules `callmon serve` would use: the card's, under any CALLMON_* setting.
    alerts = alert_config(Settings.model_validate({}), model.card.alerts)
    report = bench_alerts(
        items=items, model=model, alerts=alerts,
        speakers=[s.strip() for s in args.speakers.split(",")] if args.speakers else None,
        telephone=args.telephone, calm_minutes=args.calm_minutes, seed=args.seed)
    paths = write_report(report, Path(args.out))
    print(format_report(report))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0
