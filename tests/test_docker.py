"""The Docker files: hadolint-clean, and a compose file with health checks everywhere and no
secret written into it. (The CPU image is built and run by tests/test_container.py with
podman; the CUDA image needs a GPU host and is not built here.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKER / "Dockerfile"),
                             str(DOCKER / "Dockerfile.cuda")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DOCKER / name).read_text()
        assert "HEALTHCHECK" in text and re.search(r"^USER \d+", text, re.M), name


def test_compose_file() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "streamer", "dashboard", "ingress"} <= set(services)
    assert services["streamer"]["deploy"]["replicas"] >= 2
    for name, service in services.items():
        # The streamer's health check is the image's own HEALTHCHECK.
        assert "healthcheck" in service or service.get("build"), f"{name} has no health check"
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:?[-?][^}]*\}", str(value)), \
                    f"{name}.{key} must come from the environment, not the file"
        assert service.get("environment", {}).get("REDIS_URL", "redis://redis:6379/0") \
            == "redis://redis:6379/0"
    nginx = (DOCKER / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade" in nginx
    # Ingest tokens travel in the query string: the access log must not record it.
    assert "access_log /var/log/nginx/access.log no_query;" in nginx
    assert "$request_uri" not in nginx and '"$request"' not in nginx and "$args" not in nginx
