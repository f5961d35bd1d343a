"""Supervisor authentication: HTTP basic (browsers) or a bearer token (API clients)."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException, Request, status

from streamer.settings import is_loopback  # noqa: F401  (the dashboard's own check)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class SupervisorAuth:
    """A FastAPI dependency; returns who is asking (recorded on acknowledgements).

    With no credential configured (only allowed on loopback) everyone is ``supervisor``.
    """

    def __init__(self, *, user: str, password: str | None, token: str | None) -> None:
        self.user = user
        self.password = password
        self.token = token

    @property
    def enabled(self) -> bool:
        return bool(self.password or self.token)

    def __call__(self, request: Request) -> str:
        if not self.enabled:
            return request.headers.get("X-Supervisor", self.user)[:64]
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self.token and _same(value, self.token):
            return request.headers.get("X-Supervisor", "api")[:64]
        if scheme.lower() == "basic" and self.password:
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if _same(user, self.user) & _same(password, self.password):
                return user
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "supervisor credential required",
                            headers={"WWW-Authenticate": 'Basic realm="callmon"'})
