"""Genesys Cloud AudioHook Monitor (protocol version 2) at ``/v1/audiohook``.

Genesys connects with ``Audiohook-Organization-Id``, ``Audiohook-Correlation-Id``,
``Audiohook-Session-Id`` and ``X-API-KEY`` headers (the key is checked like the ingest
token), then opens a session: ``open`` (the media formats it offers) → ``opened`` (the one
chosen: PCMU at 8 kHz, stereo ``external``/``internal`` = customer/agent, or one of them
alone). Audio follows as binary frames of interleaved PCMU. ``ping`` → ``pong``;
``paused``/``resumed``, ``discarded`` and ``update`` are followed; ``close`` → ``closed``
ends the call. A malformed message gets ``disconnect`` (reason ``error``), the peer's
``close`` is answered, and the socket closes.

Both sides number their messages: every client message must carry ``seq`` one above the
last, a ``serverseq`` no higher than the server's last ``seq``, and a ``position`` (ISO 8601
seconds) of the audio so far. Audio the client says it did not send (a ``position`` ahead of
what arrived, ``discarded``, ``resumed`` after a pause) is filled with silence up to
``max_gap_s``, so call time follows the conversation's clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from streamer.ingest.adapter import Adapter, CallEnd
from streamer.ingest.httpsig import SignatureError, verify
from streamer.protocol import (
    CLOSE_UNSUPPORTED,
    ProtocolError,
    StreamStart,
    decode_samples,
    parse_json_object,
    validate_call_id,
    validate_metadata,
)

VERSION = "2"
CHANNEL_ROLES = {"external": "customer", "internal": "agent"}
REQUIRED_HEADERS = ("audiohook-organization-id", "audiohook-correlation-id",
                    "audiohook-session-id")
#: What a signature must cover: the API key it vouches for, and the session it opens.
SIGNED = ("x-api-key", "audiohook-session-id")
CLIENT_TYPES = frozenset({"open", "close", "ping", "paused", "resumed", "discarded", "update",
                          "error"})
_DURATION = re.compile(r"PT(\d+(?:\.\d+)?)S")
#: Audio the server accepts, best first: customer and agent apart, then one of them.
ACCEPTED_CHANNELS = (["external", "internal"], ["external"], ["internal"])


def client_key(secret: str) -> bytes:
    """The HMAC key: the integration's client secret is base64 (Genesys shows it so)."""
    try:
        return base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("CALLMON_AUDIOHOOK_CLIENT_SECRET must be the integration's client "
                         "secret as Genesys shows it: base64") from None


def parse_duration(value: Any, what: str) -> float:
    """``PT12.34S`` → seconds."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ProtocolError("bad_message", f"{what} must be an ISO 8601 duration in seconds "
                            f"like 'PT1.5S', got {value!r}")
    return float(match.group(1))


def choose_media(offered: Any) -> dict[str, Any]:
    """The offered format callmon takes: PCMU 8 kHz, stereo external/internal preferred."""
    if not isinstance(offered, list):
        raise ProtocolError("bad_message", "open.parameters.media must be a list")
    for channels in ACCEPTED_CHANNELS:
        for media in offered:
            if (isinstance(media, dict) and media.get("type") == "audio"
                    and media.get("format") == "PCMU" and media.get("rate") == 8000
                    and media.get("channels") == channels):
                return {"type": "audio", "format": "PCMU", "channels": channels, "rate": 8000}
    raise ProtocolError("unsupported_media", "none of the offered media is PCMU at 8000 Hz with "
                        "channels external/internal, external or internal",
                        close_code=CLOSE_UNSUPPORTED)


def parse_open(parameters: Any, media: dict[str, Any]) -> StreamStart:
    """``open`` parameters → the call: conversationId is the call id; the participant's
    number and name and the organisation go into the metadata."""
    if not isinstance(parameters, dict):
        raise ProtocolError("bad_message", "open.parameters must be an object")
    call_id = validate_call_id(parameters.get("conversationId"))
    participant = parameters.get("participant") or {}
    if not isinstance(participant, dict):
        raise ProtocolError("bad_message", "open.parameters.participant must be an object")
    metadata: dict[str, Any] = {k: v for k, v in {
        "caller": participant.get("ani"), "caller_name": participant.get("aniName"),
        "dnis": participant.get("dnis"), "participant_id": participant.get("id"),
        "organization_id": parameters.get("organizationId"),
        "language": parameters.get("language"),
    }.items() if isinstance(v, str) and v}
    custom = parameters.get("customConfig")
    if isinstance(custom, dict):
        metadata["custom"] = custom
    roles = tuple(CHANNEL_ROLES[c] for c in media["channels"])
    return StreamStart(call_id, 8000, "mulaw", len(roles), roles, validate_metadata(metadata))


class AudioHookAdapter(Adapter):
    protocol = "audiohook"
    path = "/v1/audiohook"

    def __init__(self, link, **kwargs) -> None:
        super().__init__(link, **kwargs)
        self.session_id = self.headers.get("audiohook-session-id", "")
        self.seq = 0  # last server message number
        self.clientseq = 0  # last client message number seen
        self.received_s = 0.0  # audio received, per channel
        self.filled_s = 0.0  # audio the client did not send, filled with silence
        self.paused = False

    @classmethod
    def check_handshake(cls, headers, query, config, *, target):
        missing = [h for h in REQUIRED_HEADERS if not headers.get(h)]
        if missing:
            return 400, "missing_headers", f"AudioHook headers missing: {', '.join(missing)}"
        if config.audiohook_client_secret:
            try:
                verify(headers, method="GET", target=target,
                       key=client_key(config.audiohook_client_secret), required=SIGNED)
            except SignatureError as exc:
                return 401, "bad_signature", str(exc)
        return None

    @classmethod
    def credential(cls, headers, query) -> str:
        return headers.get("x-api-key", "")

    # -- messages from Genesys -------------------------------------------------------------

    async def receive(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._audio(message)
            return
        data = parse_json_object(message)
        kind = self._check_envelope(data)
        params = data.get("parameters")
        if kind == "open":
            await self._open(params)
        elif kind == "ping":
            await self._send("pong", {})
        elif kind == "close":
            await self._send("closed", {})
            reason = params.get("reason") if isinstance(params, dict) else None
            raise CallEnd("stop" if reason in (None, "end") else "disconnect")
        elif self.link.session is None:
            raise ProtocolError("bad_message", f"{kind!r} before the session was opened")
        elif kind == "paused":
            self.paused = True
        elif kind == "resumed":
            self.paused = False
            if isinstance(params, dict) and "discarded" in params:
                self._fill(parse_duration(params["discarded"], "resumed.discarded"))
        elif kind == "discarded":
            if not isinstance(params, dict):
                raise ProtocolError("bad_message", "discarded.parameters must be an object")
            self._fill(parse_duration(params.get("discarded"), "discarded.discarded"))
        # "update" (a new language) and "error" (the client's own report) change nothing
        # here; the position they carry is followed below like any other.
        if kind not in ("open", "close") and self.link.session is not None:
            self._follow(parse_duration(data.get("position"), "position"))

    def _check_envelope(self, data: dict[str, Any]) -> str:
        """Version, type, session id and both sequence numbers, as the protocol requires."""
        kind = data.get("type")
        if data.get("version") != VERSION:
            raise ProtocolError("bad_version", f"AudioHook protocol version must be "
                                f"{VERSION!r}, got {data.get('version')!r}")
        if kind not in CLIENT_TYPES:
            raise ProtocolError("unknown_message", f"{kind!r} is not an AudioHook client "
                                "message")
        if data.get("id") != self.session_id:
            raise ProtocolError("bad_message", "id is not this session's Audiohook-Session-Id")
        seq, serverseq = data.get("seq"), data.get("serverseq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq != self.clientseq + 1:
            raise ProtocolError("bad_sequence", f"seq must be {self.clientseq + 1}, got {seq!r}")
        if (isinstance(serverseq, bool) or not isinstance(serverseq, int)
                or not 0 <= serverseq <= self.seq):
            raise ProtocolError("bad_sequence", f"serverseq must be between 0 and {self.seq}, "
                                f"got {serverseq!r}")
        self.clientseq = seq
        return kind

    async def _open(self, params: Any) -> None:
        if self.link.session is not None:
            raise ProtocolError("already_started", "a second open in one session")
        if not isinstance(params, dict):
            raise ProtocolError("bad_message", "open.parameters must be an object")
        media = choose_media(params.get("media"))
        start = parse_open(params, media)
        await self.link.start(start, protocol=self.protocol, send_results=False)
        opened: dict[str, Any] = {"startPaused": False, "media": [media]}
        if params.get("supportedLanguages") is True:
            opened["supportedLanguages"] = []  # callmon listens to any language
        await self._send("opened", opened)

    def _audio(self, data: bytes) -> None:
        session = self.link.session
        if session is None:
            raise ProtocolError("audio_before_open", "audio before the session was opened")
        if self.paused:
            raise ProtocolError("audio_while_paused", "audio while the stream is paused")
        frames = decode_samples(data, "mulaw", session.start.channels)
        self.link.feed(frames)
        self.received_s += len(frames) / 8000

    def _follow(self, position_s: float) -> None:
        """A position ahead of the audio received means audio the client did not send."""
        self._fill(position_s - self.received_s - self.filled_s)

    def _fill(self, seconds: float) -> None:
        if seconds > 0.02:  # one frame of slack for rounding
            self.link.fill_gap(seconds, self.config.max_gap_s)
            self.filled_s += seconds

    # -- messages to Genesys ----------------------------------------------------------------

    def _message(self, kind: str, parameters: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({"version": VERSION, "type": kind, "seq": self.seq,
                           "clientseq": self.clientseq, "id": self.session_id,
                           "parameters": parameters})

    async def _send(self, kind: str, parameters: dict[str, Any]) -> None:
        await self.link.reply(self._message(kind, parameters))

    def ended(self, session, reason: str) -> list[str]:
        return []  # "closed" was sent in answer to "close"

    def refusal(self, error: ProtocolError) -> list[str]:
        return [self._message("disconnect", {"reason": "error",
                                             "info": f"{error.code}: {error}"})]

    def shutting_down(self) -> list[str]:
        return [self._message("disconnect", {"reason": "error",
                                             "info": "server shutting down; reconnect"})]

    async def linger(self, receive) -> None:
        """After ``disconnect`` the client answers with ``close``: answer ``closed``."""
        while True:
            message = await receive()
            if isinstance(message, str):
                try:
                    data = json.loads(message)
                except json.JSONDecodeError:
                    continue
                if isinstance(data, dict) and data.get("type") == "close":
                    if isinstance(data.get("seq"), int):
                        self.clientseq = data["seq"]
                    await self.link.send_now(self._message("closed", {}))
                    return
