"""The CPU image, built and run for real with podman: a Debian bookworm base made here with
debootstrap (no registry is reachable), ``docker/Dockerfile`` built on it, the container
started, and a calm-then-angry call streamed into it: health, window results and a
frustration alert from inside the container.

It needs root, podman, runc and debootstrap (``.ci/run`` installs them and sets
``CALLMON_REQUIRE_CONTAINER=1``, which turns a skip into a failure). The first run takes a
few minutes: debootstrap, then pip installing the serving dependencies into the image.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from streamer.tools.client import stream_native
from streamer.tools.redis_server import free_port

from .streaming import calm_then_angry

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/debian:bookworm-local"
IMAGE = "localhost/callmon:cpu-test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
"""

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install podman runc debootstrap)"
    return None


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    reason = _missing()
    if reason is not None:
        if os.environ.get("CALLMON_REQUIRE_CONTAINER"):
            pytest.fail(f"the container test must run here but {reason}")
        pytest.skip(reason)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(*args: str, timeout: float = 900, check: bool = True, **kwargs):
        proc = subprocess.run(["podman", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} failed:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-3000:]}")
        return proc

    return run


def debian_mirror() -> str:
    """The Debian mirror apt is configured with here."""
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*")) + [Path("/etc/apt/sources.list")]:
        if path.is_file():
            text = path.read_text()
            found = (re.search(r"^URIs:\s*(\S+)", text, re.M)
                     or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M))
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def base_image(podman, tmp_path_factory) -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    rootfs = tmp_path_factory.mktemp("rootfs")
    subprocess.run(["debootstrap", "--variant=minbase",
                    "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs),
                    debian_mirror()], check=True, capture_output=True, timeout=1200)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    podman("import", "-", BASE_IMAGE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(podman, base_image) -> str:
    extra: list[str] = []
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():  # a TLS-intercepting proxy's CA, as the host's pip uses it
        extra = ["-v", f"{ca}:/run/ca.crt:ro", "--build-arg", "CA_BUNDLE=/run/ca.crt"]
    podman("build", "--network=host", "--runtime", "runc", "--build-arg", f"BASE={base_image}",
           *extra, "-f", "docker/Dockerfile", "-t", IMAGE, ".", cwd=ROOT, timeout=1800)
    return IMAGE


def test_cpu_image_serves_a_call(podman, image, call_actors, ravdess_dir) -> None:
    port, dashboard = free_port(), free_port()
    name = f"callmon-test-{port}"
    podman("run", "-d", "--rm", "--name", name, "--runtime", "runc", "--network=host",
           "-e", f"CALLMON_PORT={port}", "-e", f"CALLMON_DASHBOARD_PORT={dashboard}",
           image, "serve", "--host", "127.0.0.1")
    try:
        health = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(1)
        logs = podman("logs", name, check=False)
        assert health is not None, f"no health answer:\n{logs.stdout}\n{logs.stderr}"
        assert health["status"] == "ok" and health["model"]["variant"] == "int8"

        audio, onset = calm_then_angry(ravdess_dir, call_actors[0])
        outcome = asyncio.run(stream_native(f"ws://127.0.0.1:{port}/v1/stream", audio[:, None],
                                            rate=16_000, call_id="in-a-container", speed=4.0))
        assert outcome.close_code == 1000 and not outcome.errors
        assert len(outcome.windows) >= int(len(audio) / 16_000) - 3
        raised = [a for a in outcome.alerts if a["kind"] == "frustration"
                  and a["state"] == "raised"]
        assert raised and raised[0]["call_time_s"] > onset, outcome.alerts
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/v1/calls",
                                    timeout=5) as r:
            assert r.status == 200
        inspect = json.loads(podman("inspect", name).stdout)[0]
        assert inspect["Config"]["User"] == "10001"
    finally:
        podman("rm", "-f", "-t", "2", name, check=False)
