"""What a user sees when a command cannot do its job: one clear line and a non-zero exit,
never a traceback (issue 13)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]


def callmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "callmon_cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "says"), [
    (["stream", "{clip}", "--url", "ws://127.0.0.1:{port}"], "connection refused"),
    (["stream", "/nonexistent/call.wav"], "/nonexistent/call.wav: no such file"),
    (["stream", "README.md"], "is not an audio file"),
    (["alerts", "--redis-url", "redis://127.0.0.1:{port}"], "cannot reach Redis"),
])
def test_one_line_and_a_non_zero_exit(args, says, ravdess_dir) -> None:
    clip = str(ravdess_dir / "Actor_01" / "03-01-01-01-01-01-01.flac")
    port = str(free_port())
    proc = callmon(*[a.format(clip=clip, port=port) for a in args])
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
