"""
The HTTP front door of the Go example server:
``GET /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<s>]`` fetches
``<scheme>://<host>/<path>`` through the tunnel of ``<clientKey>`` and
streams the response back.

The upstream half is our own lean HTTP/1.1 client
(L{remotedialer._upstream}, h11 over kept-alive tunnel streams pooled per
client key by L{remotedialer._pool}): for small requests twisted.web's
Agent cost more server time than all the rest of the request.  Each
exchange (L{_Exchange}) is called by its connection as the response is
parsed, with no Deferred between them.

The body is relayed with the producer/consumer APIs (the exchange is the
downstream request's producer, and pauses the upstream connection's
transport), so a slow downstream reader slows the tunnel stream instead of
growing memory, and a downstream reader that goes away stops the upstream
transfer.  A request body (a ServerSite's streamed body, or the spooled
one) is a producer registered on the upstream transport, so a slow target
slows the caller.

Every exchange ends, whoever leaves first:
  - the reader leaves (``notifyFinish`` errbacks, or the downstream
    connection stops our producer): the upstream connection is aborted,
    which closes the tunnel stream and so the target's connection;
  - the upstream fails before the head: an error answer, text/plain, one
    line (500 unknown client, 502 dial or TLS failure or a bad answer, 504
    timeout, 400 a request that cannot be forwarded); an idempotent request
    without a body whose kept-alive connection failed before any answer is
    asked again (at most MAX_RETRIES times) on another;
  - the upstream fails mid-body: the head is already sent, so the response
    is cut short: an HTTP/2 stream is reset; an HTTP/1.x connection closed,
    and aborted if that has not happened within ABORT_GRACE (a graceful
    close alone waits for a reader that stopped reading for ever).

?timeout= bounds the wait for the response's head (one timer per exchange,
retries included), not the body's transfer.

Only public twisted.web APIs are used downstream, so the same code serves
HTTP/1.1 and HTTP/2 (where a request has no ``channel.transport``).

https targets are verified by the IPolicyForHTTPS the FrontDoor is given
(default: the system trust store); L{InsecureTLSPolicy} verifies nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions, VerificationError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS, FileBodyProducer
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from remotedialer._addresses import split_host_port
from remotedialer._auth import token_matches
from remotedialer._endpoint import ClientNotConnected, TunnelAgentEndpointFactory
from remotedialer._logtext import failure_text, printable
from remotedialer._pool import IDLE_TIMEOUT, MAX_IDLE, ClientPool, ClientPools, Target
from remotedialer._upstream import BadResponse, RequestNotSendable, UpstreamConnection

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from remotedialer._server import Server

#: Go's default when ?timeout= is not given.
DEFAULT_TIMEOUT = 15.0
#: Longest wait for a response start that a caller may ask for.
MAX_TIMEOUT = 3600.0
#: Retries of a request whose kept-alive connection turned out closed.
MAX_RETRIES = 2

#: Headers that belong to one hop, never forwarded (RFC 9110 7.6.1); the
#: framing of each hop's body is its own (Content-Length is passed on
#: where it still holds, see L{_Exchange.response_started}).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"host",
})
#: Credentials of the caller, not of the target: kept from the target
#: unless FrontDoorAccess.forward_credentials.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie"})
_DROPPED = HOP_BY_HOP | CREDENTIAL_HEADERS

#: Methods a request may be repeated with, when its connection failed before any answer.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})

#: How long a response cut short over HTTP/1.x may take to flush what was
#: written before it before the connection is aborted (a reader that has
#: stopped reading would otherwise hold it open for ever).
ABORT_GRACE = 0.2

#: Failures whose message is already a sentence for people (the tunnel's
#: stream errors, the client's dial errors, Twisted's connection errors, a
#: response refused by its head limit or as not HTTP).
_READABLE = (error.ConnectError, error.ConnectionLost, error.ConnectionDone, defer.TimeoutError,
             BadResponse, RequestNotSendable)

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Targets whose parsed form a front door remembers (then it starts again).
_TARGETS_KEPT = 1024


# TLS to the targets.


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """A client TLS connection that checks no certificate (SNI still sent for DNS names)."""

    def __init__(self, context: SSL.Context, hostname: bytes) -> None:
        self._context = context
        text = hostname.decode("ascii", "replace")
        self._server_name = None if isIPAddress(text) or isIPv6Address(text) else hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IPolicyForHTTPS)
class InsecureTLSPolicy:
    """
    https without verification (C{--target-insecure}): for targets with
    self-signed certificates, such as a fresh cluster's API server.  The
    traffic is encrypted, but anyone on the path can impersonate the target.
    """

    def __init__(self) -> None:
        self._context = CertificateOptions(verify=False).getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> _UnverifiedCreator:
        return _UnverifiedCreator(self._context, hostname)


# Why a fetch failed, for people.


def describe_failure(failure: Failure) -> str | None:
    """
    One line saying why a fetch failed, or None for an unexpected error (a
    bug: its text may be a Python repr).
    """
    if failure.check(SSL.Error):
        value = failure.value
        errors = value.args[0] if value is not None and value.args else []
        details = []
        if isinstance(errors, list):
            details = [e[-1] for e in errors if isinstance(e, tuple) and e and e[-1]]
        return "TLS handshake failed: " + (", ".join(details) or "no reason given")
    if failure.check(VerificationError):
        return "TLS handshake failed: the certificate is not for this host"
    if failure.check(*_READABLE):
        return " ".join(failure_text(failure).split())
    return None


def split_target(scheme: str, host_port: str) -> tuple[str, int]:
    """
    The host (without brackets) and port of a front-door target
    (C{host}, C{host:port}, C{[v6]} or C{[v6]:port}); ValueError if it is
    not one (only printable ASCII is: it goes into a Host header).
    """
    if not host_port.isascii() or not host_port.isprintable() or " " in host_port:
        raise ValueError("not printable ASCII")
    if host_port.startswith("[") and host_port.endswith("]"):
        return host_port[1:-1], _DEFAULT_PORTS[scheme]
    if ":" not in host_port:
        return host_port, _DEFAULT_PORTS[scheme]
    return split_host_port(host_port)


def host_header(scheme: str, host: str, port: int) -> bytes:
    """The Host header for a target, as twisted.web's Agent writes it (the port only if not the default)."""
    name = f"[{host}]" if ":" in host else host
    if port == _DEFAULT_PORTS[scheme]:
        return name.encode("ascii")
    return f"{name}:{port}".encode("ascii")


# One exchange.


@implementer(IPushProducer)
class _Exchange:
    """
    One front-door request: its upstream connection (whose
    L{remotedialer._upstream.ResponseHandler} it is), its relay into the
    downstream request (whose producer it is once the body does not come
    whole in one read: pause and resume go to the upstream transport;
    stopProducing, the downstream connection going, which TCP says before
    the request hears of it, means the reader is gone), and its end.
    """

    def __init__(self, front_door: FrontDoor, request: Request, client_key: str, scheme: str,
                 target: Target, host_port: str, path: bytes, headers: list[tuple[bytes, bytes]],
                 body: IBodyProducer | None, timeout: float) -> None:
        self.front_door = front_door
        self.request = request
        self.client_key = client_key
        self.target = target
        self.path = path
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self._scheme = scheme
        self._host_port = host_port
        self.attempts = 1
        self.reused = False
        #: The pool whose connection this exchange uses.
        self.pool: ClientPool | None = None
        self.connection: UpstreamConnection | None = None
        self._connecting: defer.Deferred[UpstreamConnection] | None = None
        #: The target's head is passed on (an error can only cut the response short now).
        self.answered = False
        self.reader_gone = False
        #: Answered or abandoned: nothing more is done for this exchange.
        self.over = False
        self._producing = False
        self._abort_call: IDelayedCall | None = None
        reactor = front_door.reactor
        self._timer: IDelayedCall | None = reactor.callLater(timeout, self._timed_out)
        request.notifyFinish().addErrback(self._reader_left)

    @property
    def url(self) -> str:
        """What is fetched, for error texts and the log."""
        return f"{self._scheme}://{self._host_port}" + self.path.decode("utf-8", "replace")

    # Asking.

    def fetch(self) -> None:
        """Ask the target (again, after a kept-alive connection failed under a retryable request)."""
        front_door = self.front_door
        pool = self.pool = front_door.pools.pool_for(self.client_key)
        connection = pool.take(self.target)
        if connection is not None:
            self._send(connection)
            return
        endpoint = TunnelAgentEndpointFactory(
            front_door.tunnel_server, self.client_key, front_door.tls_policy).endpoint_for(*self.target)
        d = self._connecting = pool.connect(self.target, endpoint, *front_door.head_limits)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        if self.over:
            if self.pool is not None:
                self.pool.release(connection)  # unused: as good as idle
            return
        self._send(connection)

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        if not self.over:
            self._fail(reason)

    def _send(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.reused = connection.requests > 0
        try:
            connection.request(self, self.request.method, self.path, list(self.headers), self.body)
        except RequestNotSendable as e:
            self.connection = None
            self._fail(Failure(e))

    def retryable(self, answered: bool) -> bool:
        """
        An idempotent request without a body whose kept-alive connection
        failed before any answer (as twisted.web's own pool decides).
        """
        return (not answered and self.reused and self.body is None and self.attempts <= MAX_RETRIES
                and self.request.method in IDEMPOTENT)

    # ResponseHandler

    def response_started(self, code: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._stop_timer()
        self.answered = True
        request = self.request
        request.setResponseCode(code, reason)
        grouped: dict[bytes, list[bytes]] = {}
        length = None
        chunked = False
        for name, value in headers:
            if name not in HOP_BY_HOP:
                if name in grouped:
                    grouped[name].append(value)
                else:
                    grouped[name] = [value]
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        set_header = request.responseHeaders.setRawHeaders
        for name, values in grouped.items():
            set_header(name, values)
        if length is not None and not chunked and code >= 200 and code != 204:
            # The body's length (for HEAD and 304, the length it would have).
            set_header(b"content-length", [length])

    def body_received(self, data: bytes) -> None:
        if not self.reader_gone:
            self.request.write(data)

    def body_pending(self) -> None:
        # Only now is the exchange the request's producer: a response that
        # came whole in one read (most small ones) is written without it.
        if not self.over and not self._producing:
            self._producing = True
            self.request.registerProducer(self, True)

    def response_ended(self) -> None:
        self.connection = None
        if self.over:
            return
        self.over = True
        request = self.request
        if self._producing:
            self._producing = False
            request.unregisterProducer()
        request.finish()

    def exchange_failed(self, reason: Failure, answered: bool) -> None:
        self.connection = None
        if self.over:
            return
        if not self.answered and self.retryable(answered):
            # A kept-alive connection that the target (or the tunnel) had
            # closed as we sent on it: ask again.
            self.attempts += 1
            self.fetch()
            return
        self._fail(reason)

    # IPushProducer, for the downstream request.

    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pause_reading()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resume_reading()

    def stopProducing(self) -> None:
        self._producing = False
        self._reader_left(None)

    # Ending.

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _give_up(self) -> None:
        """Nothing more is wanted from upstream: close its connection, or the dial."""
        self._stop_timer()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abandon()
        if self._connecting is not None:
            self._connecting.cancel()

    def _reader_left(self, _reason: Failure | None) -> None:
        # Stop fetching, or stop the body (closing the tunnel stream).
        self.reader_gone = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if not self.over:
            self.over = True
            self._give_up()

    def _timed_out(self) -> None:
        self._timer = None
        if self.over:
            return
        self._give_up()
        self._fail(Failure(defer.TimeoutError(f"no response within {self.timeout:g} s")))

    def _fail(self, failure: Failure) -> None:
        self.over = True
        self._give_up()
        request, url = self.request, self.url
        reason = describe_failure(failure)
        if reason is None:
            self.front_door.log.failure("front door: fetching {url} failed unexpectedly", failure,
                                        url=url)
            reason = "unexpected error in the front door (see the server log)"
        if self.answered or request.startedWriting:
            # The upstream's status and headers are already ours: the only
            # honest way to say the body is cut short is to abort the
            # response (the reader sees fewer bytes than Content-Length, or
            # no last chunk).
            self.front_door.log.warn("front door: {url} failed mid-body: {reason}", url=url,
                                     reason=reason)
            self._cut_short()
            return
        if failure.check(defer.TimeoutError):
            code, text = 504, f"timeout waiting for {url}"
        elif failure.check(ClientNotConnected):
            code, text = 500, reason
        elif failure.check(RequestNotSendable):
            code, text = 400, f"{url}: the request cannot be forwarded: {reason}"
        else:
            code, text = 502, f"{url}: {reason}"
        request.write(FrontDoor.text(request, code, text))
        request.finish()

    def _cut_short(self) -> None:
        """
        End a response whose head is sent so that the reader sees a
        truncated body, and soon: an HTTP/2 stream is reset (a clean end
        would look complete; the connection's other streams go on); an
        HTTP/1.x connection, which now carries only this response, is closed
        after what was written is flushed, or aborted after ABORT_GRACE.
        """
        request = self.request
        if self.reader_gone or request.channel is None:
            return
        if self._producing:
            self._producing = False
            request.unregisterProducer()
        channel = request.channel
        reset_stream = getattr(channel, "abortConnection", None)  # H2Stream is an ITransport
        if reset_stream is not None:
            reset_stream()
            return
        request.loseConnection()
        self._abort_call = self.front_door.reactor.callLater(ABORT_GRACE, channel.forceAbortClient)


def refuse_unknown_client(server: Any, prefix: bytes = b"/client/") -> Callable[[bytes, bytes], Any]:
    """
    A L{HeaderGuardFactory} C{early} hook for a front door at C{prefix}: a
    request with a body for a client no route reaches is answered 500 (Go's
    text) before its body is read, instead of after spooling all of it.
    """

    def early(method: bytes, path: bytes) -> tuple[int, str] | None:
        if not path.startswith(prefix):
            return None
        key = unquote(path[len(prefix):].split(b"/", 1)[0].split(b"?", 1)[0].decode("utf-8", "replace"))
        if not key or server.reaches(key):
            return None
        return 500, f"failed to find Session for client {key}"

    return early


_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


@functools.lru_cache(maxsize=1024)
def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class FrontDoorAccess:
    """
    Who may use the front door, and what it passes on.

    By default only loopback callers are answered (a front door on the
    tunnel's listener is otherwise an open proxy into every client's
    network).  With C{token_hashes}, a caller anywhere presenting
    C{Proxy-Authorization: Bearer <token>} whose SHA-256 is listed is
    answered; with C{open}, anyone.  The caller's C{Authorization} and
    C{Cookie} are not sent to targets unless C{forward_credentials}.
    Targets that are this server's own listeners (C{own_ports} on a
    loopback host) are refused, so the front door cannot be nested into
    itself.
    """

    #: SHA-256 digests of the accepted tokens (a L{TokenFile} is re-read on SIGHUP).
    token_hashes: Iterable[bytes] | None = None
    open: bool = False
    forward_credentials: bool = False
    own_ports: frozenset[int] = frozenset()

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """Why C{request} may not pass (status, one line), or None."""
        if self.token_hashes is not None:
            value = request.getHeader(b"Proxy-Authorization") or b""
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token and token_matches(token, self.token_hashes):
                return None
            return 407, "front door: a valid Proxy-Authorization: Bearer token is required"
        if self.open:
            return None
        caller = request.getClientAddress()
        host = getattr(caller, "host", None)
        if isinstance(host, str) and _is_loopback(host):
            return None
        return 403, ("front door: only loopback callers are answered "
                     "(configure front-door tokens, or open it)")

    def nested(self, host_port: str) -> bool:
        """C{host:port} is one of this server's own listeners."""
        try:
            host, port = split_host_port(host_port)
        except ValueError:
            return False
        return port in self.own_ports and _is_loopback(host)


class FrontDoor(Resource):
    """
    The ``/client/`` resource of a server (see module docstring).

    @param tls_policy: verifies https targets (default: the system trust
        store, C{BrowserLikePolicyForHTTPS()}).
    @param response_head_bytes: largest response head (status line and
        headers) read from a target; C{response_headers} the most header
        lines.  Over either: 502 (see L{remotedialer._headlimit}).
    @param access: who may use it (L{FrontDoorAccess}; default: loopback
        callers only, credentials not forwarded).
    @param idle_connections: kept-alive connections per client and target
        (0: a new tunnel stream for every request); C{idle_timeout} how long
        one may idle (see L{remotedialer._pool}).
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        server: Server,
        reactor: IReactorTime | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
        response_head_bytes: int = 64 * 1024,
        response_headers: int = 100,
        access: FrontDoorAccess | None = None,
        idle_connections: int = MAX_IDLE,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        #: (Not C{server}: Resource.putChild overwrites that attribute.)
        self.tunnel_server = server
        self._access = access if access is not None else FrontDoorAccess()
        self._dropped = HOP_BY_HOP if self._access.forward_credentials else _DROPPED
        self.head_limits = (response_head_bytes, response_headers)
        self.reactor = reactor if reactor is not None else server.reactor
        self.tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()
        self._targets: dict[tuple[str, str], tuple[str, int, bytes, bool] | None] = {}
        #: Kept-alive connections, one pool per client key (L{ClientPools}).
        self.pools = ClientPools(self.reactor, getattr(server, "sessions", None),
                                 max_idle=idle_connections, idle_timeout=idle_timeout)

    def render(self, request: Request) -> bytes | int:
        refusal = self._access.refusal(request)
        if refusal is not None:
            if refusal[0] == 407:
                request.setHeader(b"Proxy-Authenticate", b"Bearer")
            return self.text(request, *refusal)
        parts = request.postpath or []  # (a list, while rendering)
        if len(parts) < 3 or not all(parts[:3]):
            return self.text(
                request, 404, "usage: /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<seconds>]"
            )
        client_key, scheme, host_port = (p.decode("utf-8", "replace") for p in parts[:3])
        if scheme not in _DEFAULT_PORTS:
            return self.text(request, 400, "unsupported scheme (use http or https)")
        timeout = DEFAULT_TIMEOUT
        values = request.args.get(b"timeout")
        if values:
            try:
                timeout = float(values[0])
            except ValueError:
                timeout = math.nan
            if not 0 < timeout <= MAX_TIMEOUT:
                return self.text(
                    request, 400, f"timeout must be a number of seconds, over 0 and at most {MAX_TIMEOUT:g}"
                )
        target = self._target(scheme, host_port)
        if target is None:
            return self.text(request, 400, f"bad target {printable(host_port)}: "
                                           "use host, host:port or [v6]:port")
        host, port, host_value, nested = target
        if nested:
            return self.text(request, 403, "front door: the target is this server's own listener")
        # The path as the client sent it (postpath is already unquoted, and
        # unquoting %3F or %2F would change what the target is asked for).
        raw_path, _, query = request.uri.partition(b"?")
        path = b"/" + b"/".join(raw_path.split(b"/")[1 + len(request.prepath or []) + 3:])
        if query:
            kept = b"&".join(q for q in query.split(b"&") if q and not q.startswith(b"timeout="))
            if kept:
                path += b"?" + kept
        dropped = self._dropped
        headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders()
                   if name.lower() not in dropped for value in values]
        headers.append((b"Host", host_value))
        if not self.pools.max_idle:
            headers.append((b"Connection", b"close"))
        # A ServerSite's StreamingRequest streams its body; other requests have it spooled.
        body: IBodyProducer | None = getattr(request, "body_producer", None)
        if body is None and request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            body = FileBodyProducer(request.content)
        exchange = _Exchange(self, request, client_key, scheme, (scheme, host, port), host_port, path,
                             headers, body, timeout)
        exchange.fetch()
        return NOT_DONE_YET

    def _target(self, scheme: str, host_port: str) -> tuple[str, int, bytes, bool] | None:
        """
        (host, port, Host header, one of our own listeners) of a target, or
        None if it is not one; remembered, as the same few come again and again.
        """
        key = (scheme, host_port)
        if key in self._targets:
            return self._targets[key]
        try:
            host, port = split_target(scheme, host_port)
        except ValueError:
            target = None
        else:
            target = (host, port, host_header(scheme, host, port), self._access.nested(host_port))
        if len(self._targets) >= _TARGETS_KEPT:
            self._targets.clear()
        self._targets[key] = target
        return target

    @staticmethod
    def text(request: Request, code: int, text: str) -> bytes:
        """Set an error status; the one-line text/plain body to send."""
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return " ".join(text.split()).encode("utf-8") + b"\n"
