"""HTTP Message Signatures (HMAC-SHA256) as Genesys AudioHook signs its connection requests:
``Signature-Input`` and ``Signature`` header fields (draft-ietf-httpbis-message-signatures,
structured field dictionaries of RFC 8941), keyed with the integration's client secret.

Only what AudioHook uses is implemented: one signature, an inner list of component names
(header fields and the derived ``@request-target``, ``@authority``, ``@method``, ``@path``,
``@query``), string and integer parameters, ``alg="hmac-sha256"``. The signature base is
re-encoded from the parsed values, never copied from the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

MAX_CLOCK_SKEW_S = 3
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+\-.^_`|~]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER = re.compile(r"-?[0-9]{1,15}")


class SignatureError(ValueError):
    """The request's signature is missing, malformed, expired or wrong."""


@dataclass(frozen=True, slots=True)
class SignatureInput:
    label: str
    components: tuple[str, ...]
    params: tuple[tuple[str, str | int], ...]

    def encoded(self) -> str:
        """The inner list as the signature base's ``@signature-params`` line has it."""
        inner = " ".join(_string(c) for c in self.components)
        return f"({inner})" + "".join(f";{k}={_bare(v)}" for k, v in self.params)

    def param(self, key: str) -> str | int | None:
        return next((v for k, v in self.params if k == key), None)


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare(value: str | int) -> str:
    return str(value) if isinstance(value, int) else _string(value)


class _Parser:
    """A structured-field parser for the subset above (RFC 8941 §4.2)."""

    def __init__(self, text: str) -> None:
        self.s = text.strip()
        self.i = 0

    def done(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise SignatureError(f"expected {char!r} at {self.i} in a signature field")
        self.i += 1

    def spaces(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.i += 1

    def key(self) -> str:
        m = _KEY.match(self.s, self.i)
        if not m:
            raise SignatureError("a signature field member has no valid key")
        self.i = m.end()
        return m.group(0)

    def bare_item(self) -> str | int | bytes:
        c = self.peek()
        if c == '"':
            self.i += 1
            out = []
            while True:
                if self.done():
                    raise SignatureError("unterminated string in a signature field")
                ch = self.s[self.i]
                self.i += 1
                if ch == "\\":
                    nxt = self.peek()
                    if nxt not in ('"', "\\"):
                        raise SignatureError("bad escape in a signature field string")
                    out.append(nxt)
                    self.i += 1
                elif ch == '"':
                    return "".join(out)
                elif not 0x20 <= ord(ch) < 0x7F:
                    raise SignatureError("a non-ASCII character in a signature field string")
                else:
                    out.append(ch)
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0:
                raise SignatureError("unterminated byte sequence in a signature field")
            try:
                value = base64.b64decode(self.s[self.i + 1 : end], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SignatureError("a signature is not valid base64") from exc
            self.i = end + 1
            return value
        m = _INTEGER.match(self.s, self.i)
        if m and (m.end() == len(self.s) or not self.s[m.end()].isalnum()):
            self.i = m.end()
            return int(m.group(0))
        m = _TOKEN.match(self.s, self.i)
        if m:
            self.i = m.end()
            return m.group(0)
        raise SignatureError(f"unexpected {c!r} in a signature field")

    def params(self) -> list[tuple[str, str | int]]:
        out: list[tuple[str, str | int]] = []
        while self.peek() == ";":
            self.i += 1
            self.spaces()
            key = self.key()
            value: str | int | bytes = True  # type: ignore[assignment]
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            if isinstance(value, (bytes, bool)):
                raise SignatureError(f"signature parameter {key!r} must be a string or integer")
            out.append((key, value))
        return out

    def dictionary(self) -> dict[str, tuple[object, list[tuple[str, str | int]]]]:
        members: dict[str, tuple[object, list[tuple[str, str | int]]]] = {}
        while not self.done():
            key = self.key()
            self.expect("=")
            if self.peek() == "(":
                self.i += 1
                items: list[str] = []
                while True:
                    self.spaces()
                    if self.peek() == ")":
                        self.i += 1
                        break
                    item = self.bare_item()
                    if not isinstance(item, str):
                        raise SignatureError("covered components must be strings")
                    if self.peek() == ";":
                        raise SignatureError("component parameters are not supported")
                    items.append(item)
                    if self.peek() not in (" ", ")"):
                        raise SignatureError("malformed inner list in a signature field")
                value: object = tuple(items)
            else:
                value = self.bare_item()
            members[key] = (value, self.params())
            self.spaces()
            if self.done():
                break
            self.expect(",")
            self.spaces()
        return members


def parse_signature_input(value: str) -> list[SignatureInput]:
    out = []
    for label, (components, params) in _Parser(value).dictionary().items():
        if not isinstance(components, tuple):
            raise SignatureError("Signature-Input members must be inner lists")
        out.append(SignatureInput(label, components, tuple(params)))
    return out


def signature_base(signature: SignatureInput, values: dict[str, str]) -> str:
    """The lines the HMAC is computed over; ``values``: component name → value."""
    lines = []
    for name in signature.components:
        if name == "@signature-params":
            raise SignatureError('"@signature-params" must not be a covered component')
        if name not in values:
            raise SignatureError(f"the signature covers {name!r}, which the request lacks")
        lines.append(f"{_string(name)}: {values[name]}")
    lines.append(f'"@signature-params": {signature.encoded()}')
    return "\n".join(lines)


def component_values(headers: dict[str, str], *, method: str, target: str) -> dict[str, str]:
    """Header fields (lower-case names, trimmed values) and the derived components."""
    path, _, query = target.partition("?")
    values = {k.lower(): v.strip() for k, v in headers.items()}
    values.update({"@method": method.upper(), "@request-target": target, "@path": path,
                   "@query": "?" + query})
    if "host" in values:
        values["@authority"] = values["host"].lower()
    return values


def sign(headers: dict[str, str], *, method: str, target: str, key: bytes,
         components: tuple[str, ...], keyid: str, nonce: str, created: int | None = None,
         expires_in_s: int = 300, label: str = "sig1") -> dict[str, str]:
    """``Signature-Input`` and ``Signature`` for a request, as AudioHook clients make them."""
    created = int(time.time()) if created is None else created
    signature = SignatureInput(label, components, (
        ("keyid", keyid), ("nonce", nonce), ("alg", "hmac-sha256"), ("created", created),
        ("expires", created + expires_in_s)))
    base = signature_base(signature, component_values(headers, method=method, target=target))
    mac = hmac.new(key, base.encode(), hashlib.sha256).digest()
    return {"Signature-Input": f"{label}={signature.encoded()}",
            "Signature": f"{label}=:{base64.b64encode(mac).decode()}:"}


def verify(headers: dict[str, str], *, method: str, target: str, key: bytes,
           required: tuple[str, ...] = (), now: float | None = None) -> None:
    """Check a request's signature (``headers``: lower-case names).

    Raises:
        SignatureError: unsigned, malformed, expired, not covering ``required``, or wrong.
    """
    if "signature-input" not in headers or "signature" not in headers:
        raise SignatureError("the request is not signed (no Signature-Input/Signature)")
    inputs = parse_signature_input(headers["signature-input"])
    if not inputs:
        raise SignatureError("Signature-Input is empty")
    signature = inputs[0]
    signatures = _Parser(headers["signature"]).dictionary()
    mac_item = signatures.get(signature.label)
    if mac_item is None or not isinstance(mac_item[0], bytes):
        raise SignatureError(f"no signature labelled {signature.label!r}")
    alg = signature.param("alg") or "hmac-sha256"
    if alg != "hmac-sha256":
        raise SignatureError(f"signature algorithm {alg!r} is not supported")
    now = time.time() if now is None else now
    created, expires = signature.param("created"), signature.param("expires")
    if isinstance(created, int) and created > now + MAX_CLOCK_SKEW_S:
        raise SignatureError("the signature was created in the future")
    if isinstance(expires, int) and expires < now - MAX_CLOCK_SKEW_S:
        raise SignatureError("the signature has expired")
    missing = [c for c in required if c not in signature.components]
    if missing:
        raise SignatureError(f"the signature does not cover {', '.join(missing)}")
    base = signature_base(signature, component_values(headers, method=method, target=target))
    expected = hmac.new(key, base.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac_item[0]):
        raise SignatureError("the signature does not match (wrong client secret, or the "
                             "request was changed)")
