"""The wire messages the docs show are the ones the code sends: every JSON example in
docs/schema.md and the native protocol's messages in docs/protocol.md have exactly the keys
of the message the server builds, so a field added in code (or dropped) cannot go
undocumented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streamer import schema

DOCS = Path(__file__).resolve().parent.parent / "docs"


def json_blocks(name: str) -> list[dict]:
    text = (DOCS / name).read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def inline_message(name: str, kind: str) -> set[str]:
    """The keys of the inline ``{"type":"<kind>",…}`` message in a doc (values may be ``…``)."""
    text = (DOCS / name).read_text()
    found = [m for m in re.findall(r"`(\{[^`]*\})`", text) if f'"type":"{kind}"' in m]
    assert len(found) == 1, f"{name}: expected one inline {kind!r} message, found {found}"
    return set(re.findall(r'"(\w+)":', found[0]))


def code_messages() -> dict[str, dict]:
    """Each published message type as the code builds it."""
    window = schema.WindowResult(call_id="c", role="customer", channel=0, window_index=0,
                                 start_s=0.0, end_s=3.0, speech=True, speech_ratio=1.0,
                                 scores={"angry": 1.0}, frustration=1.0, distress=0.0)
    alert = schema.Alert(id="a", call_id="c", role="customer", kind="frustration",
                         state="raised", score=1.0, threshold=0.5, window_index=0,
                         call_time_s=3.0)
    started = schema.CallEvent(id="e", type="call_started", call_id="c", roles=("customer",),
                               sample_rate=8000, encoding="mulaw", protocol="native")
    return {"window": window.to_wire(), "alert": alert.to_wire(),
            "call_started": started.to_wire(),
            "error": json.loads(schema.error_message("bad_json", "x"))}


def test_schema_examples_have_the_fields_the_server_publishes() -> None:
    examples = {block["type"]: block for block in json_blocks("schema.md")}
    built = code_messages()
    assert {"window", "alert", "call_started"} <= set(examples)
    for kind, example in examples.items():
        assert set(example) == set(built[kind]), (
            f"docs/schema.md's {kind} example: missing {sorted(set(built[kind]) - set(example))}"
            f", extra {sorted(set(example) - set(built[kind]))}")


@pytest.mark.parametrize("kind", ["started", "ended"])
def test_protocol_answers_have_the_fields_the_server_sends(kind: str) -> None:
    if kind == "started":
        sent = schema.started_message("c", labels=["a"], window_s=3.0, hop_s=1.0, max_speed=4.0,
                                      speed_burst_s=10.0)
    else:
        sent = schema.ended_message("c", reason="stop", duration_s=1.0, windows=1, scored=1,
                                    silent=0, dropped=0, alerts_raised=0)
    assert inline_message("protocol.md", kind) == set(json.loads(sent))


def test_protocol_error_example_is_the_error_the_server_sends() -> None:
    errors = [b for b in json_blocks("protocol.md") if b.get("type") == "error" and "v" in b]
    assert errors and all(set(b) == set(code_messages()["error"]) for b in errors)


#: CALLMON_* names the docs use that are not serve settings: the tests' corpus, and a
#: dialplan variable of the Asterisk example.
NOT_SETTINGS = {"CALLMON_RAVDESS", "CALLMON_ID"}


def test_every_documented_environment_variable_is_a_setting(monkeypatch) -> None:
    """Settings ignore unknown CALLMON_* variables, so a documented name that is not a field
    would be silently without effect (CALLMON_MAX_GAP_S was)."""
    from dashboard.settings import DashboardSettings
    from streamer.service import ingest_config

    root = DOCS.parent
    texts = [root / "README.md", *DOCS.glob("*.md"), root / "models/weights/MODEL_CARD.md",
             *(root / "docker").iterdir()]
    named = set()
    for path in texts:
        named |= set(re.findall(r"CALLMON_[A-Z0-9_]+", path.read_text()))
    fields = {f"CALLMON_{name.upper()}" for name in DashboardSettings.model_fields}
    assert named - NOT_SETTINGS <= fields, sorted(named - NOT_SETTINGS - fields)
    monkeypatch.setenv("CALLMON_MAX_GAP_S", "1.5")
    assert ingest_config(DashboardSettings()).max_gap_s == 1.5


def test_every_error_code_the_ingest_sends_is_documented() -> None:
    """Each ``ProtocolError("code", …)`` raised anywhere under streamer/ is named (in
    backquotes) in docs/protocol.md, where a platform engineer looks a refusal up."""
    import ast

    codes = set()
    for path in (DOCS.parent / "streamer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ProtocolError"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                codes.add(node.args[0].value)
    assert len(codes) > 30  # the walk found the raises
    doc = (DOCS / "protocol.md").read_text()
    assert not {c for c in codes if f"`{c}`" not in doc}


def test_the_readme_names_every_api_route() -> None:
    from dashboard.app import create_app
    from dashboard.auth import SupervisorAuth

    app = create_app(redis_url="redis://127.0.0.1:1/0",
                     auth=SupervisorAuth(user="s", password=None, token=None))
    paths = {getattr(r, "path", "") for r in app.routes}
    public = {p for p in paths if p.startswith("/api/") or p in ("/healthz", "/metrics")}
    assert "/api/v1/predict" in public
    readme = (DOCS.parent / "README.md").read_text().replace("{id}", "{*}")
    missing = {p for p in public if re.sub(r"\{\w+\}", "{*}", p) not in readme}
    assert not missing, sorted(missing)
