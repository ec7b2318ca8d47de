"""
A front-door request read: C{/client/<clientKey>/<scheme>/<host>[/<path>]
[?timeout=<s>]} becomes a L{Fetch} (what to ask which target through
which client, with which headers), or a refusal (status, one line).
Nothing here does I/O: L{parse} is a function of the request.

C{?timeout=} is the front door's own (how long to wait for the response
head), never passed to the target: seconds, as Go's example server takes
it, or a Go duration (C{32s}, C{1m0s}), as client-go (kubectl) adds it to
its requests.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable

import attrs
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from twisted.web.server import Request

from remotedialer.protocol._addresses import split_host_port
from remotedialer.protocol._codec import MAX_CONNECT_PAYLOAD
from remotedialer.protocol._text import printable

__all__ = [
    "CREDENTIAL_HEADERS",
    "DEFAULT_PORTS",
    "DEFAULT_TIMEOUT",
    "DROPPED",
    "HOP_BY_HOP",
    "MAX_TIMEOUT",
    "USAGE",
    "Fetch",
    "error_body",
    "host_header",
    "connection_options",
    "parse",
    "split_target",
    "upgrade_of",
]

#: Go's default when ?timeout= is not given.
DEFAULT_TIMEOUT = 15.0


#: Longest wait for a response start that a caller may ask for.
MAX_TIMEOUT = 3600.0


#: Headers that belong to one hop, never forwarded (RFC 9110 7.6.1); the
#: framing of each hop's body is its own (Content-Length is passed on
#: where it still holds, see L{remotedialer.frontdoor._exchange.Exchange.response_started}).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"host",
})


#: Credentials of the caller, not of the target: kept from the target
#: unless FrontDoorAccess.forward_credentials.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie"})


#: What is not passed on to a target by default (FrontDoorAccess.forward_credentials keeps the credentials).
DROPPED = HOP_BY_HOP | CREDENTIAL_HEADERS


DEFAULT_PORTS = {"http": 80, "https": 443}


def split_target(scheme: str, host_port: str) -> tuple[str, int]:
    """
    The host (without brackets) and port of a front-door target
    (C{host}, C{host:port}, C{[v6]} or C{[v6]:port}); ValueError if it is
    not one (only printable ASCII is: it goes into a Host header).
    """
    if not host_port.isascii() or not host_port.isprintable() or " " in host_port:
        raise ValueError("not printable ASCII")
    if host_port.startswith("[") and host_port.endswith("]"):
        return host_port[1:-1], DEFAULT_PORTS[scheme]
    if ":" not in host_port:
        return host_port, DEFAULT_PORTS[scheme]
    return split_host_port(host_port)


def host_header(scheme: str, host: str, port: int) -> bytes:
    """The Host header for a target, as twisted.web's Agent writes it (the port only if not the default)."""
    name = f"[{host}]" if ":" in host else host
    if port == DEFAULT_PORTS[scheme]:
        return name.encode("ascii")
    return f"{name}:{port}".encode("ascii")


@attrs.frozen
class Fetch:
    """What a front-door request asks for: C{method path} of C{scheme://host:port} behind C{client_key}."""

    client_key: str
    scheme: str
    host: str
    port: int
    #: The target as the caller wrote it (for error texts and the log).
    host_port: str
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: IBodyProducer | None
    timeout: float
    #: The protocol the caller asks to switch to (its Upgrade header), passed
    #: on with C{Connection: Upgrade}; None for an ordinary request.
    upgrade: bytes | None = None

    @property
    def target(self) -> tuple[str, str, int]:
        """The pool's key: (scheme, host, port)."""
        return (self.scheme, self.host, self.port)

    @property
    def url(self) -> str:
        """What is fetched, for error texts and the log."""
        return f"{self.scheme}://{self.host_port}" + self.path.decode("utf-8", "replace")


_NUMBER = re.compile(rb"[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?")

USAGE = "usage: /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<seconds>]"


def upgrade_of(request: Request) -> bytes | None:
    """
    What C{request} asks to switch to: its C{Upgrade} header, when it is
    HTTP/1.1 without a body (kubectl's SPDY upgrade is a POST with
    C{Content-Length: 0}) and its C{Connection} header names C{upgrade}
    (RFC 9110 7.8).
    """
    if request.clientproto != b"HTTP/1.1":
        return None
    headers = request.requestHeaders
    length = headers.getRawHeaders(b"content-length")
    if headers.hasHeader(b"transfer-encoding") or (length and length != [b"0"]):
        return None  # (a body would be the new protocol's first bytes, or lost: not an upgrade we pass)
    upgrade = request.requestHeaders.getRawHeaders(b"upgrade")
    if not upgrade:
        return None
    tokens = b",".join(request.requestHeaders.getRawHeaders(b"connection") or ())
    if b"upgrade" not in (token.strip().lower() for token in tokens.split(b",")):
        return None
    return b", ".join(upgrade)


def connection_options(values: Iterable[bytes]) -> frozenset[bytes]:
    """
    The header names a C{Connection} header's values name (lower case):
    this hop's too, never passed on (RFC 9110 7.6.1).
    """
    tokens = (token.strip().lower() for value in values for token in value.split(b","))
    return frozenset(token for token in tokens if token)


def parse(request: Request, dropped: frozenset[bytes], close: bool,
          upgradable: bool = False) -> Fetch | tuple[int, str]:
    """
    The L{Fetch} C{request} asks for, or why it cannot be one (status, one
    line).  Headers named in C{dropped} are not passed on; C{close} asks
    the target to close the connection after the answer (no pooling).
    With C{upgradable} (the caller's connection can switch protocols), an
    upgrade the caller asks for is passed on, as Go's ReverseProxy does:
    C{Upgrade} as it came, C{Connection: Upgrade}.
    """
    parts = request.postpath or []  # (a list, while rendering)
    if len(parts) < 3 or not all(parts[:3]):
        return 404, USAGE
    client_key, scheme, host_port = (p.decode("utf-8", "replace") for p in parts[:3])
    if scheme not in DEFAULT_PORTS:
        return 400, "unsupported scheme (use http or https)"
    # ?timeout=<seconds> is the front door's (Go's example server); any other
    # form (Kubernetes' ?timeout=32s on every kubectl request) is the target's.
    timeout = DEFAULT_TIMEOUT
    ours = b""
    values = request.args.get(b"timeout")
    if values and _NUMBER.fullmatch(values[0]):
        ours = b"timeout=" + values[0]
        try:
            timeout = float(values[0])
        except ValueError:
            timeout = math.nan
        if not 0 < timeout <= MAX_TIMEOUT:
            return 400, f"timeout must be a number of seconds, over 0 and at most {MAX_TIMEOUT:g}"
    target = _target(scheme, host_port)
    if target is None:
        return 400, f"bad target {printable(host_port)}: use host, host:port or [v6]:port"
    host, port, host_value = target
    if len(host) + 16 > MAX_CONNECT_PAYLOAD and len(_dial_target(host, port)) > MAX_CONNECT_PAYLOAD:
        return 400, (f"target {printable(host_port)} is too long: a tunnel dial names at most "
                     f"{MAX_CONNECT_PAYLOAD} bytes (tcp/host:port)")
    # The path as the client sent it (postpath is already unquoted, and
    # unquoting %3F or %2F would change what the target is asked for).
    raw_path, _, query = request.uri.partition(b"?")
    path = b"/" + b"/".join(raw_path.split(b"/")[1 + len(request.prepath or []) + 3:])
    if query:
        kept = b"&".join(q for q in query.split(b"&") if q and q != ours) if ours else query
        if kept:
            path += b"?" + kept
    named = connection_options(request.requestHeaders.getRawHeaders(b"connection") or ())
    headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders()
               if name.lower() not in dropped and name.lower() not in named for value in values]
    headers.append((b"Host", host_value))
    upgrade = upgrade_of(request) if upgradable else None
    if upgrade is not None:
        headers.append((b"Connection", b"Upgrade"))
        headers.append((b"Upgrade", upgrade))
    elif close:
        headers.append((b"Connection", b"close"))
    # A ServerSite's StreamingRequest streams its body; other requests have it spooled.
    body: IBodyProducer | None = getattr(request, "body_producer", None)
    if body is None and request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        body = FileBodyProducer(request.content)
    return Fetch(client_key, scheme, host, port, host_port, path, headers, body, timeout, upgrade)


def _dial_target(host: str, port: int) -> str:
    """What the tunnel's Connect names for a target (as the tunnel's Agent endpoints dial it)."""
    return f"tcp/[{host}]:{port}" if ":" in host else f"tcp/{host}:{port}"


@functools.lru_cache(maxsize=1024)  # the same few targets come again and again
def _target(scheme: str, host_port: str) -> tuple[str, int, bytes] | None:
    """(host, port, Host header) of a front-door target, or None if it is not one."""
    try:
        host, port = split_target(scheme, host_port)
    except ValueError:
        return None
    return host, port, host_header(scheme, host, port)


#: Longest error text the front door answers (before escaping).
ERROR_TEXT_LIMIT = 512


def error_body(request: Request, code: int, text: str) -> bytes:
    """
    Set an error status; the one-line text/plain body to send: C{text}
    with control characters escaped (a client's Error text, a client key
    from the URL: what the caller's terminal would show) and cut to
    L{ERROR_TEXT_LIMIT} characters.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return printable(" ".join(text.split()), ERROR_TEXT_LIMIT).encode("utf-8") + b"\n"
