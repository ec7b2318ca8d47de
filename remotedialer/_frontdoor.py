"""
The HTTP front door of the Go example server:
``GET /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<s>]`` fetches
``<scheme>://<host>/<path>`` through the tunnel of ``<clientKey>`` and
streams the response back.

The body is relayed with the producer/consumer APIs (the upstream response
is registered as the downstream request's producer), so a slow downstream
reader slows the tunnel stream instead of growing memory, and a downstream
reader that goes away stops the upstream transfer.

Every exchange ends, whoever leaves first:
  - the reader leaves (``notifyFinish`` errbacks, or the downstream
    connection stops our producer): the fetch is cancelled, or the upstream
    body stopped, which closes the tunnel stream and so the target's
    connection;
  - the upstream fails before the head: an error answer, text/plain, one
    line (500 unknown client, 502 dial or TLS failure, 504 timeout);
  - the upstream fails mid-body: the head is already sent, so the response
    is cut short: an HTTP/2 stream is reset; an HTTP/1.x connection closed,
    and aborted if that has not happened within ABORT_GRACE (a graceful
    close alone waits for a reader that stopped reading for ever).

Only public twisted.web APIs are used, so the same code serves HTTP/1.1 and
HTTP/2 (where a request has no ``channel.transport``).

https targets are verified by the IPolicyForHTTPS the FrontDoor is given
(default: the system trust store); L{InsecureTLSPolicy} verifies nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, VerificationError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from remotedialer._addresses import split_host_port
from remotedialer._auth import token_matches
from remotedialer._deferred import maybe_deferred
from remotedialer._endpoint import ClientNotConnected, TunnelAgentEndpointFactory
from remotedialer._headlimit import HeadLimitedConnection, HeadLimitedEndpointFactory
from remotedialer._logtext import failure_text
from remotedialer._pool import IDLE_TIMEOUT, MAX_IDLE, ClientPool, ClientPools

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from remotedialer._server import Server

#: Go's default when ?timeout= is not given.
DEFAULT_TIMEOUT = 15.0
#: Longest wait for a response start that a caller may ask for.
MAX_TIMEOUT = 3600.0
#: Retries of a request whose kept-alive connection turned out closed.
MAX_RETRIES = 2

#: Headers that belong to one hop, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"host",
}

#: How long a response cut short over HTTP/1.x may take to flush what was
#: written before it before the connection is aborted (a reader that has
#: stopped reading would otherwise hold it open for ever).
ABORT_GRACE = 0.2

#: Failures whose message is already a sentence for people (the tunnel's
#: stream errors, the client's dial errors, Twisted's connection errors).
_READABLE = (error.ConnectError, error.ConnectionLost, error.ConnectionDone, defer.TimeoutError)


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
    bug: its text may be a Python repr).  Agent wraps the causes of a failed
    request in lists of Failures (C{reasons}): those are unwrapped, and the
    ones with no readable text (such as the body decoder's own complaint
    next to the connection loss that caused it) left out; a response that
    failed for those reasons only is one that did not parse.
    """
    reasons = getattr(failure.value, "reasons", None)
    if isinstance(reasons, list) and reasons:
        texts = [describe_failure(r) for r in reasons if isinstance(r, Failure)]
        text = "; ".join(dict.fromkeys(t for t in texts if t))
        if not text and failure.check(ResponseFailed):
            text = "the target's answer is not valid HTTP"
        return text or None
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


# One exchange.


class _BodyProtocol(Protocol):
    """A protocol for a response body (C{IResponse.deliverBody})."""

    # deliverBody connects the protocol to an IPushProducer, not an
    # ITransport, which Protocol's own annotation cannot allow for.
    transport: IPushProducer  # type: ignore[assignment]


@implementer(IPushProducer)
class _BodyRelay(_BodyProtocol):
    """
    Streams an upstream response body into the downstream request, and is
    the request's producer: pause and resume go to the upstream transport,
    and stopProducing (the downstream connection going, which TCP says
    before the request hears of it) marks the reader gone.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self._exchange.request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._exchange.reader_gone:
            self._exchange.request.write(data)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._exchange.reader_gone = True
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        request = self._exchange.request
        if not self._exchange.reader_gone and request.producer is not None:
            request.unregisterProducer()
        lost = self._exchange.connection_lost
        if reason.check(PotentialDataLoss) and lost is not None and not lost.check(ConnectionDone):
            # A body read until the connection closed, and it closed with an
            # error (the tunnel stream was cut): the body is not complete.
            self.done.errback(lost)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class _Discard(_BodyProtocol):
    """A body nobody will read: stop it (which closes its tunnel stream)."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class _Exchange:
    """One front-door request: its fetch, its body relay, whether its reader left."""

    def __init__(self, request: Request, url: bytes, client_key: str, headers: Headers,
                 deadline: float) -> None:
        self.request = request
        self.url = url
        self.client_key = client_key
        self.headers = headers
        self.body: IBodyProducer | None = None
        self.deadline = deadline
        self.timeout = 0.0
        self.attempts = 1
        self.reused = False
        #: The pool whose connection this exchange uses.
        self.pool: ClientPool | None = None
        self.reader_gone = False
        #: Why the upstream connection ended, as its transport said.
        self.connection_lost: Failure | None = None
        self.fetch: defer.Deferred[IResponse] | None = None
        self.relay: _BodyRelay | None = None
        self._abort_call: IDelayedCall | None = None
        request.notifyFinish().addErrback(self._reader_left)

    def upstream_lost(self, reason: Failure) -> None:
        self.connection_lost = reason

    def began(self, connection: HeadLimitedConnection) -> None:
        """Our request goes out on C{connection} (a new one, or kept alive)."""
        self.reused = connection.requests > 1

    def retryable(self, failure: Failure) -> bool:
        """
        As twisted.web's own pool decides (which cannot here: see
        L{remotedialer._pool}): an idempotent request without a body whose
        kept-alive connection failed before any answer, not cancelled.
        """
        if self.attempts > MAX_RETRIES or self.body is not None or not self.reused:
            return False
        if self.request.method not in (b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"):
            return False
        if not failure.check(RequestTransmissionFailed, ResponseNeverReceived):
            return False
        reasons = getattr(failure.value, "reasons", None) or []
        return not any(isinstance(r, Failure) and r.check(defer.CancelledError) for r in reasons)

    def _reader_left(self, _reason: Failure) -> None:
        # Stop fetching, or stop the body (closing the tunnel stream).
        self.reader_gone = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self.relay is not None and self.relay.transport is not None:
            self.relay.transport.stopProducing()
        elif self.fetch is not None:
            self.fetch.cancel()

    def cut_short(self, reactor: IReactorTime) -> None:
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
        if request.producer is not None:
            request.unregisterProducer()
        channel = request.channel
        reset_stream = getattr(channel, "abortConnection", None)  # H2Stream is an ITransport
        if reset_stream is not None:
            reset_stream()
            return
        request.loseConnection()
        self._abort_call = reactor.callLater(ABORT_GRACE, channel.forceAbortClient)


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


def _timed_out(result: object, timeout: float) -> NoReturn:
    raise defer.TimeoutError(f"no response within {timeout:g} s")


_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}
#: Credentials of the caller, not of the target: kept from the target
#: unless FrontDoorAccess.forward_credentials.
CREDENTIAL_HEADERS = {b"authorization", b"cookie"}


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

    token_hashes: frozenset[bytes] | None = None
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
        self._server = server
        self._access = access if access is not None else FrontDoorAccess()
        self._head_limits = (response_head_bytes, response_headers)
        self._reactor = reactor if reactor is not None else server.reactor
        self._tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()
        #: Kept-alive connections, one pool per client key (L{ClientPools}).
        self.pools = ClientPools(self._reactor, getattr(server, "sessions", None),
                                 max_idle=idle_connections, idle_timeout=idle_timeout)

    def render(self, request: Request) -> bytes | int:
        refusal = self._access.refusal(request)
        if refusal is not None:
            if refusal[0] == 407:
                request.setHeader(b"Proxy-Authenticate", b"Bearer")
            return self._text(request, *refusal)
        parts = request.postpath or []  # (a list, while rendering)
        if len(parts) < 3 or not all(parts[:3]):
            return self._text(
                request, 404, "usage: /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<seconds>]"
            )
        client_key, scheme, host = (p.decode("utf-8", "replace") for p in parts[:3])
        if scheme not in ("http", "https"):
            return self._text(request, 400, "unsupported scheme (use http or https)")
        try:
            timeout = float(request.args.get(b"timeout", [DEFAULT_TIMEOUT])[0])
        except ValueError:
            timeout = math.nan
        if not 0 < timeout <= MAX_TIMEOUT:
            return self._text(
                request, 400, f"timeout must be a number of seconds, over 0 and at most {MAX_TIMEOUT:g}"
            )
        # The path as the client sent it (postpath is already unquoted, and
        # unquoting %3F or %2F would change what the target is asked for).
        raw_path, _, query = request.uri.partition(b"?")
        path = b"/".join(raw_path.split(b"/")[1 + len(request.prepath or []) + 3:])
        kept = b"&".join(q for q in query.split(b"&") if q and not q.startswith(b"timeout="))
        url = f"{scheme}://{host}/".encode() + path + (b"?" + kept if kept else b"")
        if self._access.nested(host):
            return self._text(request, 403, "front door: the target is this server's own listener")
        dropped = HOP_BY_HOP if self._access.forward_credentials else HOP_BY_HOP | CREDENTIAL_HEADERS
        headers = Headers({k: v for k, v in request.requestHeaders.getAllRawHeaders()
                           if k.lower() not in dropped})
        exchange = _Exchange(request, url, client_key, headers, self._reactor.seconds() + timeout)
        exchange.timeout = timeout
        streamed = getattr(request, "body_producer", None)  # a ServerSite's StreamingRequest
        if streamed is not None:
            exchange.body = streamed
        elif request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            exchange.body = FileBodyProducer(request.content)
        self._fetch(exchange)
        return NOT_DONE_YET

    def _fetch(self, exchange: _Exchange) -> None:
        """Ask the target (again, after a kept-alive connection failed under a retryable request)."""
        pool = exchange.pool = self.pools.pool_for(exchange.client_key)
        inner = TunnelAgentEndpointFactory(self._server, exchange.client_key, self._tls_policy)
        endpoints = HeadLimitedEndpointFactory(
            inner, *self._head_limits, on_lost=exchange.upstream_lost, on_begin=exchange.began,
            on_connection_lost=pool.connection_lost)
        agent = Agent.usingEndpointFactory(self._reactor, endpoints, pool=pool)
        d = exchange.fetch = maybe_deferred(agent.request, exchange.request.method, exchange.url,
                                            exchange.headers, exchange.body)
        # Agent turns a cancelled request into ResponseNeverReceived, which
        # addTimeout would not recognise as its own timeout: say so ourselves.
        timeout = max(0.0, exchange.deadline - self._reactor.seconds())
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=lambda r, t: _timed_out(r, exchange.timeout))
        d.addCallback(self._respond, exchange)
        d.addErrback(self._failed, exchange)

    def _respond(self, response: IResponse, exchange: _Exchange) -> defer.Deferred[None] | None:
        request = exchange.request
        if exchange.reader_gone:
            response.deliverBody(_Discard())
            return None
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        if isinstance(response.length, int):
            request.setHeader(b"Content-Length", str(response.length).encode())
        relay = exchange.relay = _BodyRelay(exchange)
        response.deliverBody(relay)
        relay.done.addCallback(self._body_done, exchange)
        return relay.done

    @staticmethod
    def _body_done(_: None, exchange: _Exchange) -> None:
        if exchange.pool is not None:
            exchange.pool.request_done()
        if not exchange.reader_gone:
            exchange.request.finish()

    def _failed(self, failure: Failure, exchange: _Exchange) -> None:
        request, url = exchange.request, exchange.url.decode("utf-8", "replace")
        if exchange.reader_gone:
            return  # the reader left first; stopping the upstream was our doing
        if exchange.retryable(failure):
            # A kept-alive connection that the target (or the tunnel) had
            # closed as we sent on it: ask again.
            exchange.attempts += 1
            self._fetch(exchange)
            return
        reason = describe_failure(failure)
        if reason is None:
            self.log.failure("front door: fetching {url} failed unexpectedly", failure, url=url)
            reason = "unexpected error in the front door (see the server log)"
        if exchange.relay is not None or request.startedWriting:
            # The upstream's status and headers are already ours: the only
            # honest way to say the body is cut short is to abort the
            # response (the reader sees fewer bytes than Content-Length, or
            # no last chunk).
            self.log.warn("front door: {url} failed mid-body: {reason}", url=url, reason=reason)
            exchange.cut_short(self._reactor)
            return
        if failure.check(defer.TimeoutError):
            code, text = 504, f"timeout waiting for {url}"
        elif failure.check(ClientNotConnected):
            code, text = 500, reason
        else:
            code, text = 502, f"{url}: {reason}"
        request.write(self._text(request, code, text))
        request.finish()

    @staticmethod
    def _text(request: Request, code: int, text: str) -> bytes:
        """Set an error status; the one-line text/plain body to send."""
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return " ".join(text.split()).encode("utf-8") + b"\n"
