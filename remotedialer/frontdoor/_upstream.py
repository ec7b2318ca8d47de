"""
The front door's HTTP/1.1 client: one connection to a target, through a
tunnel stream (or TLS over one), carrying one request at a time and kept
alive between them by L{remotedialer.frontdoor._pool}.

twisted.web's Agent did this job at about two thirds of the server's time
per small front-door request: a URI parsed, endpoint objects built and a
pool looked up for every request, a dozen Deferreds between the request
and its response, a wrapper per data chunk.  Here the front door's
exchange is called directly: h11 serialises the request and parses the
response (no HTTP parser of our own), and each event goes to the
exchange's L{ResponseHandler} methods as it is parsed.

Back-pressure both ways is the transport's: a request body is a push
producer registered on the connection's transport (the tunnel stream
pauses it while the far end is full); the exchange pauses and resumes the
transport for the reader downstream.  Response heads are bounded by
L{remotedialer.frontdoor._headlimit} before h11 sees them.

A connection ends its exchange exactly once: the response complete
(C{response_ended}), or a failure (C{exchange_failed}) saying whether any
of the response had arrived, so the front door knows whether the head is
already passed on and whether the request may be retried.  An exchange
that gives up first (its reader left, its timeout) calls L{abandon}, and
hears nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol as TypingProtocol

import h11
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IProducer, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from remotedialer.frontdoor._headlimit import NOT_HTTP, HeadLimit, ResponseHeadTooLarge
from remotedialer.tunnel._interfaces import IFlowTransport

__all__ = ["BadResponse", "RequestNotSendable", "ResponseHandler", "UpstreamConnection"]

Header = tuple[bytes, bytes]


class BadResponse(Exception):
    """The target's answer is not HTTP/1.x as h11 reads it."""

    def __str__(self) -> str:
        return NOT_HTTP


class RequestNotSendable(Exception):
    """The request cannot be written as HTTP/1.1 (h11 refused it); its text says why."""


class ResponseHandler(TypingProtocol):
    """What a connection tells the exchange whose request it carries."""

    def response_started(self, code: int, reason: bytes, headers: Sequence[Header]) -> None:
        """The final (not 1xx) head: status, reason phrase, headers (names in lower case)."""

    def body_received(self, data: bytes) -> None:
        """Bytes of the response body, de-chunked."""

    def body_pending(self) -> None:
        """
        The response is not all in with the bytes received so far (said
        once per response): from now on its reader may need to pause it.
        """

    def response_ended(self) -> None:
        """The response is complete."""

    def protocols_switched(self, reason: bytes, headers: Sequence[Header],
                           connection: UpstreamConnection) -> None:
        """
        The target answered 101 to an upgrade: C{connection} is no longer
        HTTP and no longer its pool's; the handler takes it over
        (L{UpstreamConnection.switch}) or aborts it.
        """

    def exchange_failed(self, reason: Failure, answered: bool) -> None:
        """
        The exchange failed; C{answered}: some of the response had arrived
        (so a retry could repeat what the target has done).
        """


class Keeper(TypingProtocol):
    """Where a connection goes when it is done: its pool (L{remotedialer.frontdoor._pool.ClientPool})."""

    def release(self, connection: UpstreamConnection) -> None:
        """C{connection} answered and may be used again."""

    def connection_lost(self, connection: UpstreamConnection) -> None:
        """C{connection} is gone."""


@implementer(IConsumer)
class _BodyWriter:
    """The consumer a request body is produced into: its bytes framed by h11."""

    def __init__(self, connection: UpstreamConnection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> None:
        self._connection.send_body(data)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        raise RuntimeError("a request body is registered by its connection")

    def unregisterProducer(self) -> None:
        pass


class UpstreamConnection(Protocol):
    """
    One kept-alive HTTP/1.1 connection of a L{ClientPool} (see module
    docstring); C{key} is the target it reaches, C{(scheme, host, port)}.
    """

    transport: IFlowTransport
    _log = Logger()

    def __init__(self, pool: Keeper, key: tuple[str, str, int], head_bytes: int,
                 max_headers: int) -> None:
        self.pool = pool
        self.key = key
        #: Requests sent on this connection (over 1: it was reused).
        self.requests = 0
        #: When it last became idle (the pool's clock), for the idle timeout.
        self.idle_since = 0.0
        self.closed = False
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max(head_bytes, 16 * 1024))
        self._head = HeadLimit(head_bytes, max_headers)
        self._handler: ResponseHandler | None = None
        self._answered = False
        self._refused: str | None = None  # why the response was refused (head limits, not HTTP)
        self._body: IBodyProducer | None = None
        self._paused = False  # the reader downstream has paused our transport
        self._started = False
        self._pending = False
        #: The protocol the connection switched to after a 101 (None: HTTP).
        self._switched: IProtocol | None = None

    # The exchange's side.

    def request(self, handler: ResponseHandler, method: bytes, target: bytes, headers: list[Header],
                body: IBodyProducer | None) -> None:
        """
        Send a request (C{headers} without framing: Content-Length or
        chunked is added for C{body}); its response goes to C{handler}.
        Raises L{RequestNotSendable} (the connection is then closed).
        """
        self.requests += 1
        self._handler = handler
        self._answered = False
        self._started = False  # the final head is passed on
        self._pending = False  # body_pending is said
        self._head.arm()
        if body is not None:
            if body.length is UNKNOWN_LENGTH:
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                headers.append((b"Content-Length", b"%d" % body.length))
        try:
            data = self._h11.send(h11.Request(method=method, target=target, headers=headers))
            if body is None or body.length == 0:
                data += self._h11.send(h11.EndOfMessage())
                body = None
        except h11.LocalProtocolError:
            # (h11's own words quote the offending bytes as a Python repr:
            # never for a caller's answer or a log line.)
            self._handler = None
            self.transport.abortConnection()
            raise RequestNotSendable("its method, target or a header is not valid HTTP/1.1") from None
        self.transport.write(data)
        if body is not None:
            self._body = body
            self.transport.registerProducer(body, True)
            body.startProducing(_BodyWriter(self)).addCallbacks(self._body_sent, self._body_failed,
                                                                 callbackArgs=(body,), errbackArgs=(body,))

    def abandon(self) -> None:
        """The exchange gives up (reader gone, timeout): tell it nothing more, close at once."""
        self._handler = None
        self._stop_body()
        if not self.closed:
            self.transport.abortConnection()

    def pause_reading(self) -> None:
        if not self.closed:
            self._paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if not self.closed:
            self._paused = False
            self.transport.resumeProducing()

    # The request body.

    def send_body(self, data: bytes) -> None:
        if self._body is None or self.closed or not data:
            return
        self._send_body_part(h11.Data(data=data), "the request body is longer than its Content-Length")

    def _body_sent(self, _: object, body: IBodyProducer) -> None:
        if self._body is not body:
            return
        self._body = None
        self.transport.unregisterProducer()
        if self.closed:
            return
        self._send_body_part(h11.EndOfMessage(), "the request body is shorter than its Content-Length")

    def _send_body_part(self, event: h11.Data | h11.EndOfMessage, refusal: str) -> None:
        """Frame C{event} of the body with h11 and send it; a wrong length breaks the body."""
        try:
            out = self._h11.send(event)
        except h11.LocalProtocolError:
            self._body_broken(Failure(RequestNotSendable(refusal)))
            return
        self.transport.write(out)

    def _body_failed(self, reason: Failure, body: IBodyProducer) -> None:
        if self._body is not body:
            return  # stopped by us: its failure is ours
        self._body = None
        self.transport.unregisterProducer()
        self._body_broken(reason)

    def _body_broken(self, reason: Failure) -> None:
        handler, self._handler = self._handler, None
        self._stop_body()
        if not self.closed:
            self.transport.abortConnection()
        if handler is not None:
            handler.exchange_failed(reason, self._answered)

    def _stop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            if not self.closed:
                self.transport.unregisterProducer()
            try:
                body.stopProducing()
            except Exception:
                self._log.failure("front door: stopping a request body failed")

    def switch(self, protocol: IProtocol) -> None:
        """
        After L{ResponseHandler.protocols_switched}: the stream's bytes go to
        C{protocol} from now on, those that came with the 101 first.
        """
        self._switched = protocol
        trailing, _closed = self._h11.trailing_data
        if trailing:
            protocol.dataReceived(bytes(trailing))
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _protocols_switched(self, event: h11.InformationalResponse) -> None:
        handler, self._handler = self._handler, None
        assert handler is not None
        self._stop_body()
        self.pool.connection_lost(self)  # not the pool's any more
        handler.protocols_switched(event.reason, event.headers, self)

    # Protocol

    def dataReceived(self, data: bytes) -> None:
        if self._switched is not None:
            self._switched.dataReceived(data)
            return
        if self._handler is None:
            # Bytes nobody asked for (an idle connection, or one given up):
            # it cannot carry another exchange.
            self.transport.abortConnection()
            return
        self._answered = True
        if self._head.counting:
            refused = self._head.feed(data)
            if refused is not None:
                self._refused = refused
                self.transport.abortConnection()
                return
        self._h11.receive_data(data)
        self._events()

    def _events(self, eof: bool = False) -> None:
        connection = self._h11
        while self._handler is not None:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError:
                if not eof:  # (at the end, an incomplete body: the close is the reason)
                    self._refused = NOT_HTTP
                    self.transport.abortConnection()
                return
            kind = type(event)
            if kind is h11.Data:
                self._handler.body_received(bytes(event.data))  # type: ignore[union-attr]
            elif kind is h11.Response:
                self._started = True
                self._handler.response_started(event.status_code, event.reason, event.headers)  # type: ignore[union-attr]
            elif kind is h11.EndOfMessage:
                self._ended()
                return
            elif event is h11.NEED_DATA:
                if self._started and not self._pending:
                    self._pending = True
                    self._handler.body_pending()
                return
            elif kind is h11.InformationalResponse and event.status_code == 101:  # type: ignore[union-attr]
                self._protocols_switched(event)  # type: ignore[arg-type]
                return
            elif event is h11.PAUSED or kind is h11.ConnectionClosed:
                return
            # (Another InformationalResponse: another head follows.)

    def _ended(self) -> None:
        handler, self._handler = self._handler, None
        assert handler is not None
        connection = self._h11
        reusable = connection.our_state is h11.DONE and connection.their_state is h11.DONE
        if reusable:
            connection.start_next_cycle()
            reusable = not connection.trailing_data[0]  # bytes past the response: not ours to guess
        if reusable:
            if self._paused:
                # The reader paused us for the last bytes of its response:
                # the next exchange reads this connection afresh.
                self._paused = False
                self.transport.resumeProducing()
            self.pool.release(self)
        else:
            self._stop_body()  # the target answered before the body was all sent
            if not self.closed:
                self.transport.loseConnection()
        handler.response_ended()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self._switched is not None:
            self._switched.connectionLost(reason)
            return
        self._stop_body()
        self.pool.connection_lost(self)
        if self._handler is None:
            return
        if self._refused is not None:
            refused = BadResponse() if self._refused == NOT_HTTP else ResponseHeadTooLarge(self._refused)
            reason = Failure(refused)
        elif reason.check(ConnectionDone) and self._answered:
            # A clean end: a body read until the close is complete now.
            self._h11.receive_data(b"")
            self._events(eof=True)
            if self._handler is None:
                return
        handler, self._handler = self._handler, None
        handler.exchange_failed(reason, self._answered)
