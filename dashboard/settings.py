"""The dashboard's settings: the streamer's (host, Redis, model) plus its own, read from
the same ``CALLMON_*`` environment."""

from __future__ import annotations

from pydantic import Field

from streamer.settings import Settings


class DashboardSettings(Settings):
    """Configuration of the dashboard, alone (``callmon dashboard``) or inside ``serve``."""

    dashboard_port: int = Field(8000, ge=0, le=65535,
                                description="dashboard and REST API port (0: any free one)")
    supervisor_user: str = Field("supervisor", description="dashboard HTTP basic user name")
    supervisor_password: str | None = Field(
        None, description="dashboard credential; required when binding beyond loopback")
    supervisor_token: str | None = Field(None, description="dashboard bearer token (API clients)")
    public_metrics: bool = Field(False, description="serve /metrics without the credential")
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="dashboard: a request's headers must arrive within this")
    dashboard_max_connections: int = Field(
        1000, ge=1, description="dashboard: concurrent connections (beyond: 503)")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest predict upload")
    predict_concurrency: int = Field(
        1, ge=1, description="predict uploads decoded and scored at once (each takes CPU from "
                             "the live calls of a serve process)")
    predict_queue: int = Field(
        8, ge=0, description="predict uploads waiting their turn; beyond: 503 with Retry-After")


#: The fields the dashboard adds to the streamer's.
OWN_FIELDS = frozenset(DashboardSettings.model_fields) - frozenset(Settings.model_fields)
