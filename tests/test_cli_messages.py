"""What a user sees when a command cannot do its job: one clear line and a non-zero exit,
never a traceback (issue 13)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.tools.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]


def callmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "callmon_cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "says"), [
    (["stream", "{clip}", "--url", "ws://127.0.0.1:{port}"], "connection refused"),
    (["stream", "{clip}", "--protocol", "audiosocket", "--url", "tcp://127.0.0.1:{port}",
      "--call-id", "c-42"], "AudioSocket calls are named by a UUID (Asterisk's ${UUID()}): "
                            "--call-id 'c-42' is not one"),
    (["stream", "/nonexistent/call.wav"], "/nonexistent/call.wav: no such file"),
    (["stream", "README.md"], "README.md is not a readable audio file (Format not recognised"),
    (["alerts", "--redis-url", "redis://127.0.0.1:{port}"], "cannot reach Redis"),
    (["alerts", "--since", "yesterday", "--redis-url", "redis://127.0.0.1:{port}"],
     "since 'yesterday' is neither a duration (30s, 10m, 2h, 1d), 0 (all that is kept) nor a "
     "stream id (1764400000000-0)"),
    (["alerts", "--redis-url", "redis://:s3cret@127.0.0.1:{port}/0"],
     "cannot reach Redis at redis://:***@127.0.0.1:"),  # the password stays out of logs
    (["calibrate", "--runs", "runs/f0", "--card", "/nonexistent"],
     "--card /nonexistent: no model_card.json there"),
    # Checked before anything is loaded or scored: the data, and each fold's export.
    (["bench", "alerts", "--data", "/nonexistent"], "/nonexistent is not a directory"),
    (["evaluate", "--data", "/nonexistent"], "/nonexistent is not a directory"),
    (["train", "--out", "README.md/run"],
     "--out: cannot write into README.md/run: README.md is a file, not a folder"),
    # --summarise writes a file: one already there (a rerun) is no error, the runs are.
    (["train", "--summarise", "/nonexistent", "--out", "README.md"], "/nonexistent"),
    (["evaluate", "--data", "{corpus}", "--speakers", "99"], "no utterances from speakers ['99']"),
    (["calibrate", "--runs", "/nonexistent"], "/nonexistent: no such fold folder"),
    (["bench", "model", "--backbones", "whisper-base:9"], "how many of whisper-base's 6 layers"),
    (["bench", "model", "--backbones", "hubert"], "'hubert' is not whisper-tiny or whisper-base"),
    (["serve", "--port", "99999"],
     "bad setting port=99999: Input should be less than or equal to 65535"),
    (["serve", "--port", "{port}", "--dashboard-port", "-1"],
     "bad setting dashboard_port=-1: Input should be greater than or equal to 0"),
    # (--no-dashboard: the default dashboard port, 8000, may be taken on the test's host)
    (["serve", "--port", "{port}", "--no-dashboard", "--model", "whisper-huge"],
     "no model 'whisper-huge': it is neither a shipped model (whisper-tiny, whisper-base) nor"),
    (["export", "--checkpoint", "README.md", "--out", "{tmp}"],
     "README.md is not a checkpoint written by callmon train"),
    (["train", "--backbone", "whisper-huge"], "unknown backbone 'whisper-huge'"),
    (["export", "--checkpoint", "README.md", "--out", "{tmp}", "--variants", "int8,onnx"],
     "variants onnx: choose one or more of fp32, int8, fp16, torch-fp16"),
])
def test_one_line_and_a_non_zero_exit(args, says, ravdess_dir, tmp_path) -> None:
    clip = str(ravdess_dir / "Actor_01" / "03-01-01-01-01-01-01.flac")
    port = str(free_port())
    proc = callmon(*[a.format(clip=clip, port=port, tmp=tmp_path / "out", corpus=ravdess_dir)
                     for a in args])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert says in proc.stderr


def test_alerts_says_when_redis_goes_away_and_comes_back(tmp_path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path)
    server.start()
    proc = subprocess.Popen([sys.executable, str(ROOT / "callmon_cli.py"), "alerts",
                             "--redis-url", server.url], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        server.kill()
        time.sleep(2.0)
        server.start()
        time.sleep(2.5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        server.close()
    assert "went away" in err and "is back" in err and "Traceback" not in err


def test_dashboard_says_at_once_that_redis_is_unreachable_without_its_password() -> None:
    """A mistyped --redis-url showed only the dashboard's address: nothing said why the page
    stayed empty. It starts degraded (Redis may come up later) and says so, URL masked."""
    import urllib.error
    import urllib.request

    port = free_port()
    url = f"redis://agent:s3cret@127.0.0.1:{free_port()}/0"
    proc = subprocess.Popen([sys.executable, str(ROOT / "callmon_cli.py"), "dashboard",
                             "--redis-url", url, "--dashboard-port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = None
    try:
        deadline = time.monotonic() + 60
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.2)
        time.sleep(1.0)  # the warning follows the address line
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert status == 503, out
    assert (f"Redis at redis://agent:***@127.0.0.1:{url.rsplit(':', 1)[1]} is not reachable"
            in out), out
    assert "s3cret" not in out and "Traceback" not in out


def test_serve_on_a_taken_port_says_so_and_leaves_nothing_running(tmp_path) -> None:
    """It used to exit with a traceback and leave its embedded Redis running, orphaned."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    before = _redis_processes()
    try:
        proc = callmon("serve", "--port", str(port), "--dashboard-port", str(free_port()))
    finally:
        taken.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"ingest port 127.0.0.1:{port} is not free" in proc.stderr and "--port" in proc.stderr
    after = _redis_processes()
    assert after <= before  # no Redis left behind


def _redis_processes() -> set[int]:
    out = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in cmd or b"valkey" in cmd:
                out.add(int(proc.name))
    return out


def test_fast_streams_a_long_file_at_the_pace_the_server_accepts(shipped_model, redis_server,
                                                                 ravdess_dir, tmp_path) -> None:
    """``--fast`` used to be refused (too_fast) for any file over ~13 s; it now sends as
    fast as the server says it accepts, native and Twilio."""
    import numpy as np
    import soundfile as sf

    from .streaming import ServiceThread, actor_clips

    audio = np.concatenate(actor_clips(ravdess_dir, "17", "calm", 8))  # ~30 s
    path = tmp_path / "long.wav"
    sf.write(path, audio, 16_000)
    with ServiceThread(shipped_model, redis_server.url, max_speed=4.0, speed_burst_s=10.0,
                       max_messages_per_s=500.0) as svc:
        for protocol in ("native", "twilio"):
            started = time.monotonic()
            proc = callmon("stream", str(path), "--url", svc.ingest_url, "--fast",
                           "--protocol", protocol, timeout=120)
            took = time.monotonic() - started
            assert proc.returncode == 0, proc.stderr
            assert "too_fast" not in proc.stderr and took < len(audio) / 16_000 / 2, took


def test_a_speed_above_the_servers_is_lowered_to_it_not_refused(shipped_model, redis_server,
                                                                  ravdess_dir, tmp_path) -> None:
    """``--speed 8`` against a server that accepts 2x streamed the head start and was then
    refused ``too_fast`` part way through the file; the client knows the server's pace from
    its "started" message, so it now sends at that pace and says so."""
    import json

    import numpy as np
    import soundfile as sf

    from .streaming import ServiceThread, actor_clips

    audio = np.concatenate(actor_clips(ravdess_dir, "17", "calm", 4))  # ~15 s
    path = tmp_path / "call.wav"
    sf.write(path, audio, 16_000)
    with ServiceThread(shipped_model, redis_server.url, max_speed=2.0, speed_burst_s=2.0,
                       max_messages_per_s=500.0) as svc:
        proc = callmon("stream", str(path), "--url", svc.ingest_url, "--speed", "8",
                       timeout=120)
    assert proc.returncode == 0 and "too_fast" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("this server accepts audio at most 2x real time (after 2 s "
                                   "at once): sending at 1.7x instead of 8x"), proc.stderr
    ended = [json.loads(line) for line in proc.stdout.splitlines() if '"ended"' in line]
    assert ended and abs(ended[0]["duration_s"] - len(audio) / 16_000) < 0.1, proc.stdout


def test_mic_without_a_sound_card_says_so_and_leaves_no_call(shipped_model, redis_server) -> None:
    """This machine has no sound card (CI installs sounddevice and PortAudio, so the device
    query itself fails): one line, a non-zero exit, and the server never hears of a call."""
    import json

    import redis

    from streamer import schema

    from .streaming import ServiceThread

    with ServiceThread(shipped_model, redis_server.url) as svc:
        proc = callmon("stream", "--mic", "--url", svc.ingest_url, "--call-id", "mic-phantom",
                       timeout=30)
        live = dict(svc.service.monitor.calls)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "microphone" in proc.stderr or "PortAudio" in proc.stderr
    assert live == {}
    client = redis.Redis.from_url(redis_server.url)
    log = [json.loads(f[b"data"]) for _, f in client.xrange(schema.ALERTS_STREAM)]
    client.close()
    assert not [e for e in log if e.get("call_id") == "mic-phantom"]


def test_bench_model_times_each_backbone_named(tmp_path) -> None:
    """Cut encoders are timed like whole ones, and the first backbone is the reference."""
    import json

    out = tmp_path / "bench.json"
    proc = callmon("bench", "model", "--backbones", "whisper-tiny:1,whisper-base:1",
                   "--no-wav2vec2", "--repeats", "2", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows[::12]] == ["whisper-tiny-encoder (1 layers)",
                                                "whisper-base-encoder (1 layers)"]
    assert {(r["variant"], r["threads"], r["batch"]) for r in rows} == {
        (v, t, b) for v in ("fp32", "int8-ffn", "int8-linear") for t in (1, 2) for b in (1, 16)}
    assert rows[0]["params_m"] < rows[12]["params_m"]
    assert "× whisper-tiny-encoder (1 layers)" in proc.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["stream", "call.wav", "--speed", "0"], "argument --speed: must be above 0, got 0"),
    (["stream", "call.wav", "--rate", "0"], "argument --rate: must be at least 1, got 0"),
    (["bench", "load", "--calls", "50,0"], "argument --calls: must be at least 1, got 0"),
    (["bench", "load", "--calls", "fifty"], "argument --calls: 'fifty' is not a whole number"),
    (["bench", "soak", "--minutes", "-1"], "argument --minutes: must be above 0, got -1"),
    (["calibrate", "--runs", "r", "--target-fa-per-hour", "-1"],
     "argument --target-fa-per-hour: must be at least 0, got -1"),
    (["bench", "alerts", "--calm-minutes", "0"], "argument --calm-minutes: must be above 0"),
    (["bench", "predict", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    # Where a command writes, checked before its work, not at its last step.
    (["calibrate", "--runs", "r", "--out", "README.md/calibration.json"],
     "argument --out: cannot write README.md/calibration.json: README.md is a file, not a folder"),
    (["bench", "alerts", "--out", "docs"], "argument --out: docs is a folder: give a file name"),
    (["evaluate", "--data", "d", "--out", "README.md/r/e.json"], "README.md is a file, not a"),
    (["export", "--checkpoint", "m.pt", "--out", "README.md"],
     "argument --out: README.md is a file, not a folder"),
])
def test_out_of_range_numbers_are_refused_before_anything_starts(args, says, capsys,
                                                                   monkeypatch) -> None:
    """``bench soak --minutes -1`` ran a server and never ended; ``bench load --calls 0``
    benchmarked nothing; ``stream --rate 0`` blamed the audio file; ``calibrate`` with a
    negative target scored every fold first, and one with an --out it could not write
    failed after scoring them all. argparse refuses them now, naming the option."""
    import callmon_cli

    monkeypatch.chdir(ROOT)  # README.md and docs/ are the repository's
    with pytest.raises(SystemExit) as exit_:
        callmon_cli.main(args)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_a_terminated_benchmark_stops_the_servers_it_started(ravdess_dir) -> None:
    """SIGTERM to ``bench soak`` (a CI timeout, a supervisor) used to kill it alone: its
    ``callmon serve`` child went on at 70 % of a core, orphaned. It now unwinds like Ctrl-C,
    stops the server and its Redis, and exits 143."""
    import signal

    bench = subprocess.Popen([sys.executable, str(ROOT / "callmon_cli.py"), "bench", "soak",
                              "--calls", "2", "--minutes", "5", "--interval-s", "5",
                              "--data", str(ravdess_dir)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                b"serve" in _cmdline(pid) for pid in children):
            time.sleep(0.5)
            children |= _children(bench.pid)
        assert any(b"serve" in _cmdline(pid) for pid in children), "no server started"
        time.sleep(3)  # into the server's start-up
        children |= _children(bench.pid)
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 143 and "Traceback" not in err, err
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in children):
        time.sleep(0.2)
    left = {p: _cmdline(p) for p in children if Path(f"/proc/{p}").exists()}
    assert not left, left


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_serve_refuses_bad_alert_rules_before_it_starts_anything(tmp_path, monkeypatch) -> None:
    """A card's alerts block or a CALLMON_* override that makes no rule is one line naming
    the rule, said before Redis or any port is started (it used to surface mid-start-up,
    after the embedded Redis, as a bare 'need 0 <= off < on <= 1')."""
    import json
    import shutil

    model = tmp_path / "model"
    model.mkdir()
    shipped = ROOT / "models" / "weights"
    shutil.copy(shipped / "emotion-int8.onnx", model)
    card = json.loads((shipped / "model_card.json").read_text())
    card["alerts"]["baseline_rate"] = 5
    (model / "model_card.json").write_text(json.dumps(card))
    before = _redis_processes()
    proc = callmon("serve", "--model", str(model), "--port", "0", "--dashboard-port", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad alert rules (the model card's alerts, under CALLMON_* settings): " \
           "baseline_rate must be in (0, 1], got 5" in proc.stderr
    assert "embedded Redis" not in proc.stderr
    monkeypatch.setenv("CALLMON_FRUSTRATION_ON", "0.1")  # under the card's off threshold
    proc = callmon("serve", "--port", "0", "--dashboard-port", "0")
    assert proc.returncode == 2 and "frustration: need 0 <= off < on <= 1, got on=0.1" \
        in proc.stderr.splitlines()[-1]
    assert _redis_processes() <= before


@pytest.mark.parametrize(("protocol", "limits", "says"), [
    ("native", {"max_call_s": 4.0}, "calls are limited to 4 s"),
    ("twilio", {"max_call_s": 4.0}, "calls are limited to 4 s"),
    ("twilio", {"max_speed": 2.0, "speed_burst_s": 2.0}, "faster than 2x real time"),
    ("audiohook", {"max_speed": 2.0, "speed_burst_s": 2.0}, "faster than 2x real time"),
])
def test_a_call_the_server_ends_part_way_says_why_in_one_line(
        shipped_model, redis_server, ravdess_dir, tmp_path, protocol, limits, says) -> None:
    """A server that ends a call part way through the file (a call over its length limit,
    audio over a pace the platform's protocol cannot announce) sends its reason, then closes:
    the client carried on sending into the closed socket and died with "received 1008 (policy
    violation) too_fast; then sent 1008 …", the server's words lost (Twilio, AudioHook) or a
    traceback's last line (native). It now stops sending and says what the server said."""
    import numpy as np
    import soundfile as sf

    from .streaming import ServiceThread, actor_clips

    audio = np.concatenate(actor_clips(ravdess_dir, "17", "calm", 4))  # ~15 s
    path = tmp_path / "call.wav"
    sf.write(path, audio, 16_000)
    with ServiceThread(shipped_model, redis_server.url, max_messages_per_s=500.0,
                       **limits) as svc:
        proc = callmon("stream", str(path), "--url", svc.ingest_url, "--protocol", protocol,
                       "--speed", "8" if "max_speed" in limits else "4", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("server refused: ") and says in lines[0], proc.stderr


def test_a_server_that_dies_mid_call_is_reported_not_taken_for_an_end(
        redis_server, ravdess_dir, tmp_path) -> None:
    """SIGKILL the server while ``callmon stream`` sends a call (native and Genesys AudioHook
    at once): each client says, in one line and with a non-zero exit, that the connection
    closed before the call ended; it must not report the call as streamed."""
    import numpy as np
    import redis
    import soundfile as sf

    from streamer import schema
    from streamer.tools.bench import ServerProcess

    from .streaming import actor_clips

    audio = np.concatenate(actor_clips(ravdess_dir, "17", "calm", 4))  # ~15 s
    path = tmp_path / "call.wav"
    sf.write(path, audio, 16_000)
    port = free_port()
    server = ServerProcess(redis_url=redis_server.url, port=port)
    client = redis.Redis.from_url(redis_server.url)
    try:
        server.wait_ready()
        streams = [subprocess.Popen(
            [sys.executable, str(ROOT / "callmon_cli.py"), "stream", str(path), "--url",
             f"ws://127.0.0.1:{port}", "--protocol", protocol, "--call-id", call_id],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for protocol, call_id in (("native", "dies-native"),
                                      ("audiohook", "00000000-0000-4000-8000-000000000042"))]
        deadline = time.monotonic() + 60
        while client.zcard(schema.LIVE_CALLS_KEY) < 2:
            assert time.monotonic() < deadline, "the two calls never went live"
            time.sleep(0.05)
        server.process.kill()
        results = [s.communicate(timeout=60) for s in streams]
    finally:
        server.stop()
    for stream, (_, stderr) in zip(streams, results, strict=True):
        lines = stderr.strip().splitlines()
        assert stream.returncode == 1 and len(lines) == 1, stderr
        assert lines[0].startswith("the connection closed before the ") and "no close frame" \
            in lines[0], stderr
