"""The service's one settings object, read from the environment (``CALLMON_*``, plus
``REDIS_URL``) and overridable from the command line."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_file() -> Path:
    """Where a local ``callmon serve`` says how to reach it (its Redis above all), so that
    ``callmon alerts`` finds an embedded Redis without a URL being copied around."""
    base = os.environ.get("CALLMON_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "callmon" if base else Path.home() / ".cache" / "callmon" / "run"
    return root / "serve.json"


def default_node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Settings(BaseSettings):
    """Configuration of ``callmon serve``; every field can be set as ``CALLMON_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CALLMON_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to bind; loopback unless told otherwise")
    port: int = Field(8080, ge=0, le=65535, description="websocket ingest port (0: any free one)")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "CALLMON_REDIS_URL"),
        description="Redis to use; unset starts an embedded Redis server",
    )
    ingest_token: str | None = Field(
        None, description="bearer token for ingest; required when binding beyond loopback")
    insecure_ingest: bool = Field(
        False, description="allow ingest beyond loopback without a token (auth done elsewhere)")
    max_calls: int = Field(500, ge=1)
    model_path: str | None = Field(
        None, description="whisper-tiny (default), whisper-base (more accurate, slower, int8 "
                          "on CPU only), or a model directory or .onnx")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto")
    backend: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="onnx (ONNX Runtime), torch (PyTorch), or auto: torch on a CUDA "
                            "device when torch has CUDA and the model ships its weights, else onnx")
    torch_compile: bool | None = Field(
        None, description="run the PyTorch backend's network through torch.compile "
                          "(default: on CUDA; start-up takes ~1 min longer)")
    model_variant: str | None = Field(None, description="fp32, int8 or fp16 (default by device)")
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads")
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="event loop: uvloop, asyncio, or auto (uvloop when installed)")
    hop_s: float = Field(1.0, gt=0, le=3.0)
    max_batch: int = Field(32, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_pending_per_stream: int | None = Field(
        None, ge=1, description="windows of one channel waiting for the model before its "
        "oldest is shed: a memory bound (staleness is max_window_age_s); default: the windows "
        "of a head start, speed_burst_s / hop_s + 3")
    max_window_age_s: float = Field(
        3.0, gt=0, description="a window that has waited longer than this for the model is shed "
        "unscored: an overloaded server stays current instead of falling behind")
    max_frame_bytes: int = Field(64 * 1024, ge=1024)
    start_timeout_s: float = Field(10.0, gt=0)
    max_gap_s: float = Field(5.0, ge=0, description="longest audio gap a platform reports "
                             "(Twilio timestamps, AudioHook pauses) filled with silence")
    max_messages_per_s: float = Field(500.0, gt=0, description="sustained messages/s per socket")
    message_burst: int = Field(1000, ge=1, description="messages allowed above that rate at once")
    max_speed: float = Field(4.0, gt=0, description="audio faster than this × real time is refused")
    speed_burst_s: float = Field(10.0, ge=0, description="seconds of audio allowed ahead of that")
    max_call_s: float = Field(4 * 3600.0, gt=0, description="longest call (seconds of audio)")
    max_connections_per_address: int = Field(200, ge=1, description="open sockets per client IP")
    ping_interval_s: float = Field(20.0, gt=0, description="keep-alive ping; dead peers dropped")
    workers: int = Field(
        1, ge=1, le=256, description="ingest processes sharing the port and one model process "
                                     "(serve --workers; 1: everything in one process)")
    inference_socket: str | None = Field(
        None, description="set by serve --workers: a worker's Unix socket to the model process")
    reuse_port: bool = Field(False, description="bind ingest with SO_REUSEPORT (workers do)")
    audiohook_client_secret: str | None = Field(
        None, description="Genesys AudioHook client secret (base64): connections must be signed")
    audiosocket_port: int | None = Field(
        None, ge=0, le=65535, description="TCP port for Asterisk AudioSocket calls; unset: off")
    audiosocket_role: Literal["customer", "agent"] = Field(
        "customer", description="role of an AudioSocket call's one channel")
    # Alert rules: unset means the thresholds stored in the model card (chosen on validation
    # calls for a target false-alert rate), or streamer.alerts' defaults without them.
    frustration_on: float | None = Field(None, gt=0, le=1)
    frustration_off: float | None = Field(None, ge=0, lt=1)
    distress_on: float | None = Field(None, gt=0, le=1)
    distress_off: float | None = Field(None, ge=0, lt=1)
    alert_consecutive: int | None = Field(None, ge=1)
    alert_clear_hold_s: float | None = Field(
        None, ge=0, description="seconds a score must stay below 'off' before an alert clears")
    alert_smoothing: float | None = Field(None, gt=0, le=1)
    alert_baseline: Literal["none", "first", "running"] | None = Field(
        None, description="score relative to the caller's own level: none, first or running")
    alert_roles: str = Field("customer", description="comma-separated roles that raise alerts")
    node: str = Field(default_factory=default_node_name)
    heartbeat_s: float = Field(5.0, gt=0, description="node heartbeat interval")
    heartbeat_ttl_s: float = Field(15.0, gt=0, description="a node silent this long is lost")
    redis_dir: str | None = Field(None, description="data folder of the embedded Redis")

    @property
    def pending_per_stream(self) -> int:
        """The scheduler's per-channel bound: as set, or room for every window of a head
        start (which a client may send at once) and the three a 3 s window spans."""
        if self.max_pending_per_stream is not None:
            return self.max_pending_per_stream
        return math.ceil(self.speed_burst_s / self.hop_s) + 3
