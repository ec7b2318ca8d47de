"""
One front-door exchange: a L{Fetch} asked of its target over a pooled
upstream connection, the answer relayed into the downstream request.

The upstream half is our own lean HTTP/1.1 client
(L{remotedialer.frontdoor._upstream}, h11 over kept-alive tunnel streams
pooled per client key by L{remotedialer.frontdoor._pool}): for small
requests twisted.web's Agent cost more server time than all the rest of
the request.  Each L{Exchange} is called by its connection as the response
is parsed, with no Deferred between them.

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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.ssl import VerificationError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.server import Request
from zope.interface import implementer

from remotedialer.frontdoor._pool import ClientPool, ClientPools
from remotedialer.frontdoor._request import HOP_BY_HOP, Fetch, connection_options, error_body
from remotedialer.frontdoor._upstream import BadResponse, RequestNotSendable, UpstreamConnection
from remotedialer.protocol._text import printable
from remotedialer.server._site import StreamingHTTPChannel
from remotedialer.tunnel._endpoint import StreamOpener, TunnelAgentEndpointFactory
from remotedialer.tunnel._exceptions import ClientNotConnected
from remotedialer.tunnel._interfaces import IFlowTransport
from remotedialer.tunnel._logtext import failure_text
from remotedialer.tunnel._relay import join

__all__ = ["ABORT_GRACE", "IDEMPOTENT", "MAX_RETRIES", "Exchange", "Upstreams", "describe_failure"]


@attrs.frozen
class Upstreams:
    """
    What an exchange needs of the front door it serves: where tunnel streams come
    from (C{opener}), how https targets are verified, the pools of
    kept-alive connections, the response-head limits, the clock and log.
    """

    opener: StreamOpener
    tls_policy: IPolicyForHTTPS
    pools: ClientPools
    head_limits: tuple[int, int]
    reactor: IReactorTime
    log: Logger


#: A reason phrase passed on as it came (visible ASCII, spaces, tabs).
_PHRASE = re.compile(rb"[\x20-\x7e\t]*")


#: Retries of a request whose kept-alive connection turned out closed.
MAX_RETRIES = 2


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


@implementer(IPushProducer)
class Exchange:
    """
    One front-door request: its upstream connection (whose
    L{remotedialer.frontdoor._upstream.ResponseHandler} it is), its relay into the
    downstream request (whose producer it is once the body does not come
    whole in one read: pause and resume go to the upstream transport;
    stopProducing, the downstream connection going, which TCP says before
    the request hears of it, means the reader is gone), and its end.
    """

    def __init__(self, upstreams: Upstreams, request: Request, fetch: Fetch) -> None:
        self.upstreams = upstreams
        self.request = request
        self.fetch = fetch
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
        self._timer: IDelayedCall | None = upstreams.reactor.callLater(fetch.timeout, self._timed_out)
        request.notifyFinish().addErrback(self._reader_left)

    @property
    def url(self) -> str:
        """What is fetched, for error texts and the log."""
        return self.fetch.url

    # Asking.

    def start(self) -> None:
        """Ask the target (again, after a kept-alive connection failed under a retryable request)."""
        upstreams = self.upstreams
        fetch = self.fetch
        pool = self.pool = upstreams.pools.pool_for(fetch.client_key)
        connection = pool.take(fetch.target)
        if connection is not None:
            self._send(connection)
            return
        endpoint = TunnelAgentEndpointFactory(
            upstreams.opener, fetch.client_key, upstreams.tls_policy).endpoint_for(*fetch.target)
        d = self._connecting = pool.connect(fetch.target, endpoint, *upstreams.head_limits)
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
            fetch = self.fetch
            connection.request(self, self.request.method, fetch.path, list(fetch.headers), fetch.body)
        except RequestNotSendable as e:
            self.connection = None
            self._fail(Failure(e))

    def retryable(self, answered: bool) -> bool:
        """
        An idempotent request without a body whose kept-alive connection
        failed before any answer (as twisted.web's own pool decides).
        """
        return (not answered and self.reused and self.fetch.body is None and self.attempts <= MAX_RETRIES
                and self.request.method in IDEMPOTENT)

    # ResponseHandler

    def response_started(self, code: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._stop_timer()
        self.answered = True
        request = self.request
        if self.fetch.upgrade is not None:
            cast(StreamingHTTPChannel, request.channel).release_input()  # an ordinary answer: no switch
        # (a reason phrase that is not visible ASCII is not passed on: it would reach the
        # caller's terminal; the code's own phrase is said instead, as Go's proxy always does)
        request.setResponseCode(code, reason if _PHRASE.fullmatch(reason) else None)
        grouped: dict[bytes, list[bytes]] = {}
        length = None
        chunked = False
        named = connection_options(value for name, value in headers if name == b"connection")
        for name, value in headers:
            if name not in HOP_BY_HOP and name not in named:
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
        if b"content-type" not in grouped:
            request.defaultContentType = None  # (not twisted.web's text/html: the target said nothing)
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
            self.start()
            return
        self._fail(reason)

    def protocols_switched(self, reason: bytes, headers: Sequence[tuple[bytes, bytes]],
                           connection: UpstreamConnection) -> None:
        """
        The target switched protocols (101): its head goes to the caller as
        it came (hop-by-hop headers but C{Upgrade} dropped, C{Connection:
        Upgrade} said), and from then on the caller's connection and the
        tunnel stream are spliced, back-pressure and closes both ways.
        """
        self._stop_timer()
        self.connection = None
        switched_to = b", ".join(value for name, value in headers if name == b"upgrade")
        if switched_to.strip().lower() != (self.fetch.upgrade or b"").strip().lower():
            # As Go's ReverseProxy: a switch to another protocol than asked is no answer.
            connection.transport.abortConnection()
            self._fail(Failure(error.ConnectionLost("the target switched to another protocol than asked")))
            return
        self.answered = True
        self.over = True
        request = self.request
        channel = cast(StreamingHTTPChannel | None, request.channel)  # (the front door checked)
        if self.reader_gone or channel is None or channel.transport is None:
            connection.transport.abortConnection()
            return
        head = Headers()
        upgrade = []
        for name, value in headers:
            if name == b"upgrade":
                upgrade.append(value)
            elif name not in HOP_BY_HOP:
                head.addRawHeader(name, value)
        head.addRawHeader(b"Connection", b"Upgrade")
        for value in upgrade:
            head.addRawHeader(b"Upgrade", value)
        channel.writeHeaders(b"HTTP/1.1", b"101", reason or b"Switching Protocols", head)  # type: ignore[no-untyped-call]  # Twisted's
        downstream = cast(IFlowTransport, channel.transport)
        downstream.unregisterProducer()  # (the HTTP channel, reading requests no more)
        downstream.resumeProducing()  # (if holding paused it: the join decides from now on)
        caller_side, target_side = join(downstream, connection.transport)
        channel.switch_protocols(caller_side)
        connection.switch(target_side)

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
        self._fail(Failure(defer.TimeoutError(f"no response within {self.fetch.timeout:g} s")))

    def _fail(self, failure: Failure) -> None:
        self.over = True
        self._give_up()
        request, url = self.request, self.url
        if self.fetch.upgrade is not None and not self.reader_gone:
            cast(StreamingHTTPChannel, request.channel).release_input()
        reason = describe_failure(failure)
        if reason is None:
            self.upstreams.log.failure("front door: fetching {url} failed unexpectedly", failure,
                                        url=printable(url))
            reason = "unexpected error in the front door (see the server log)"
        if self.answered or request.startedWriting:
            # The upstream's status and headers are already ours: the only
            # honest way to say the body is cut short is to abort the
            # response (the reader sees fewer bytes than Content-Length, or
            # no last chunk).
            self.upstreams.log.warn("front door: {url} failed mid-body: {reason}", url=printable(url),
                                     reason=printable(reason))
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
        request.write(error_body(request, code, text))
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
        self._abort_call = self.upstreams.reactor.callLater(ABORT_GRACE, channel.forceAbortClient)
