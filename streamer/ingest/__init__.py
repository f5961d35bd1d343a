"""Ingest: transports that accept calls, and one adapter per telephony platform.

    websocket transport (transport.py): handshake, token, limits, liveness, end of call
        /v1/stream     native.py      callmon's own protocol
        /v1/twilio     twilio.py      Twilio Media Streams
        /v1/audiohook  audiohook.py   Genesys Cloud AudioHook Monitor
        /v1/audiofork  audiofork.py   FreeSWITCH mod_audio_fork
    TCP transport (audiosocket.py, its own port): Asterisk AudioSocket

An adapter turns its platform's messages into the call's start, audio frames, metadata and
roles (:class:`~streamer.ingest.adapter.CallLink`). A new websocket protocol is one module
with an :class:`~streamer.ingest.adapter.Adapter` subclass, one line below, and its section
in docs/protocol.md.
"""

from __future__ import annotations

from streamer.ingest.adapter import Adapter
from streamer.ingest.audiofork import AudioForkAdapter
from streamer.ingest.audiohook import AudioHookAdapter
from streamer.ingest.native import NativeAdapter
from streamer.ingest.twilio import TwilioAdapter

#: Websocket path → adapter.
ADAPTERS: dict[str, type[Adapter]] = {
    adapter.path: adapter
    for adapter in (NativeAdapter, TwilioAdapter, AudioHookAdapter, AudioForkAdapter)
}
