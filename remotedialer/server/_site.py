"""
The server program's web site: twisted.web's Site, with the access log
opt-in and request bodies streamed to the front door instead of spooled.

An access-log line per request, written synchronously, was a fifth of the
server's time on small front-door requests (Go logs none by default), so
it is off unless asked for (C{--access-log}).

twisted.web renders a request only once its whole body is in
(C{request.content}, a temporary file past 100 KB), so a front-door upload
would be spooled to disk before its client is even looked up.  Here a
request with a body under one of C{stream_prefixes} is rendered as soon as
its head is in: L{StreamingRequest} gives the resource a
L{RequestBody} (C{request.body_producer}, an IBodyProducer for Agent)
that forwards each chunk as it arrives, and stops reading from the caller
while its consumer (the tunnel stream) is paused.  An answer given before
the body is all in (an unknown client, a refusal, a target that answered
early) ends the connection after the answer: the rest of the body is never
read.  Under HTTP/2, whose twisted.web channel cannot end a stream whose
request is still arriving, the rest is taken and dropped, and an answer
whole at once (an unknown client's 500) is held until the body is in: a
client answered mid-upload may end its stream short of its Content-Length
(curl does), which h2 takes for a protocol error of the whole connection
(GOAWAY; and twisted.web's H2 channel, a producer registered on a TLS
transport it never unregisters from, then never closes the connection).

twisted.web tells a request its method and path only when its body is
complete: the request line is taken from the HTTP/1.1 channel as it is
parsed (L{StreamingHTTPChannel}) and, under HTTP/2, from the stream's
pseudo-headers (C{H2Stream.command}/C{path}); HTTP/2 itself is still
served by twisted.web's own channel, picked by ALPN as twisted.web does.

Every site of the programs (this one, and the admin endpoint's) is a
L{BoundedSite}: its HTTP/1.1 channel applies the guard's limits to every
request (L{remotedialer.server._bounds}), and HEAD is answered with no body
wherever it is rendered (L{HeadRequest}), so twisted.web never logs one it
had to drop.

The HTTP/1.1 channel also does per connection what twisted.web did per
request (small front-door GETs are what the server mostly carries): it asks
the transport for the local address once, and keeps one idle timer, which
stays scheduled while a request is handled instead of being cancelled and
made anew around each request.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request as SiteRequest
from twisted.web.server import Site
from zope.interface import implementer

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.server._bounds import BoundedHTTPChannel

__all__ = ["BoundedSite", "HeadRequest", "RequestBody", "ServerSite", "StreamingHTTPChannel",
           "StreamingRequest"]

#: Bytes of body held for a consumer that has not started (or is paused)
#: before the caller's connection stops being read.
HELD_BODY = 64 * 1024


@implementer(IBodyProducer)
class RequestBody:
    """
    The body of a request as it arrives, for Agent: chunks go to the
    consumer at once (held, up to L{HELD_BODY}, until it starts); the
    caller's connection is paused while the consumer is, or while too much
    is held.
    """

    def __init__(self, request: StreamingRequest, length: int | None) -> None:
        self.length: object = length if length is not None else UNKNOWN_LENGTH
        self.complete = False
        self._request = request
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._consumer: IConsumer | None = None
        self._done: defer.Deferred[None] | None = None
        self._stopped = False
        self._reading_paused = False
        self._consumer_paused = False
        #: Bytes of body taken from the caller so far, and the most held at once.
        self.received = 0
        self.peak_held = 0

    # From the request.

    def chunk(self, data: bytes) -> None:
        self.received += len(data)
        if self._stopped:
            return
        if self._consumer is not None and not self._held and not self._consumer_paused:
            self._consumer.write(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        self.peak_held = max(self.peak_held, self._held_bytes)
        if self._held_bytes > HELD_BODY:
            # (Again, even if paused already: twisted.web's channel may have
            # resumed reading for its own reasons, such as a drained write.)
            self._reading_paused = True
            self._request.pause_reading()

    def finished(self) -> None:
        """The last byte of the body is in."""
        self.complete = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.complete and not self._held and self._done is not None and not self._done.called:
            self._done.callback(None)

    # IBodyProducer

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        self._done = defer.Deferred()
        self._flush()
        return self._done

    def _flush(self) -> None:
        while self._held and self._consumer is not None and not self._consumer_paused and not self._stopped:
            data = self._held.pop(0)
            self._held_bytes -= len(data)
            self._consumer.write(data)
        if not self._held and not self._consumer_paused:
            self._resume_reading()
        self._maybe_done()

    def pauseProducing(self) -> None:
        self._consumer_paused = True
        self._pause_reading()

    def resumeProducing(self) -> None:
        self._consumer_paused = False
        self._flush()

    def stopProducing(self) -> None:
        """The consumer is gone (the fetch failed, or was cancelled): take no more."""
        self._stopped = True
        self._held.clear()
        self._held_bytes = 0
        self._resume_reading()  # the request's own ending decides what becomes of the rest

    def abandon(self) -> None:
        """The request was answered before its body was all in: stop reading it, for good."""
        self._stopped = True
        self._held.clear()
        self._pause_reading()

    def discard(self) -> None:
        """The request was answered before its body was all in: take the rest, and drop it."""
        self._stopped = True
        self._held.clear()
        self._resume_reading()

    # The caller's connection.

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.complete:
            self._reading_paused = True
            self._request.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.complete:
            self._reading_paused = False
            self._request.resume_reading()


@implementer(IResource)
class _Head:
    """
    A resource rendered for HEAD: what it renders is not sent (as
    twisted.web does), but said only by its Content-Length, so that
    twisted.web has no body to eat (see L{HeadRequest}).
    """

    isLeaf = True

    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def __repr__(self) -> str:
        return f"<HEAD of {type(self._resource).__name__}>"

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        child: IResource = self._resource.getChildWithDefault(name, request)
        return child

    def putChild(self, path: bytes, child: IResource) -> None:
        self._resource.putChild(path, child)

    def render(self, request: IRequest) -> bytes | int:
        body: bytes | int = self._resource.render(request)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


class HeadRequest(SiteRequest):
    """
    A Site request that answers HEAD with no body, wherever it is rendered
    (an error text, a page, twisted.web's own 404): twisted.web, given a
    body for HEAD, drops it but logs "Warning: HEAD request <the request's
    repr, its whole URI> ... I think I'll eat it" (a 15 KB line for a 15 KB
    URI; and for a URI with a byte that is not ASCII, the repr itself
    fails: "MESSAGE LOST").
    """

    def render(self, resrc: IResource) -> None:
        if self.method == b"HEAD":
            resrc = _Head(resrc)
        super().render(resrc)  # type: ignore[no-untyped-call]  # Twisted's, untyped


class StreamingRequest(HeadRequest):
    """A Site request whose body may be streamed (see module docstring)."""

    #: The request's body as it arrives, when it is streamed; else None (use C{content}).
    body_producer: RequestBody | None = None
    #: The HTTP/1.1 request line this request was made from (L{StreamingHTTPChannel}).
    first_line: bytes | None = None
    _early: IDelayedCall | None = None
    _rendered_early = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        # twisted.web makes a request as it parses its first line.
        self.first_line = getattr(channel, "current_line", None)

    @property
    def request_line(self) -> tuple[bytes, bytes, bytes] | None:
        """(method, target, version) from the HTTP/1.1 request line, read only when needed."""
        parts = self.first_line.split(b" ") if self.first_line is not None else []
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    def _line(self) -> tuple[bytes, bytes, bytes] | None:
        line = self.request_line
        if line is not None:
            return line
        command, path = getattr(self.channel, "command", None), getattr(self.channel, "path", None)
        if isinstance(command, bytes) and isinstance(path, bytes):  # an H2Stream
            return command, path, b"HTTP/2"
        return None

    def _streams(self, path: bytes) -> bool:
        prefixes = getattr(getattr(self.channel, "site", None), "stream_prefixes", ())
        return bool(prefixes) and path.startswith(tuple(prefixes))

    def gotLength(self, length: int | None) -> None:
        line = self._line()
        if length != 0 and line is not None and self._streams(line[1]):
            self.content = BytesIO()  # stays empty: the body goes to body_producer
            self.body_producer = RequestBody(self, length)
            # Render from the reactor, not from inside the channel's parsing:
            # a small body may be complete within this same read.
            site: Site = self.channel.site  # type: ignore[attr-defined]  # set by every Site's channel
            self._early = site.reactor.callLater(0, self._render_early, line)
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def _render_early(self, line: tuple[bytes, bytes, bytes]) -> None:
        self._early = None
        if getattr(self.channel, "refused", False):
            return  # its body was refused (and answered) before it was rendered
        self._rendered_early = True
        super().requestReceived(*line)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_producer is not None:
            self.body_producer.chunk(data)
        else:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The channel says the body is all in (and, for twisted.web, that rendering may start)."""
        body = self.body_producer
        if body is None:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # Twisted's
            return
        body.finished()
        if self._finish_when_complete:
            self._finish_when_complete = False
            self._release_answer()
            super().finish()  # type: ignore[no-untyped-call]  # Twisted's, untyped
            return
        if not self._rendered_early:
            if self._early is not None and self._early.active():
                self._early.cancel()
            self._early = None
            self._rendered_early = True
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # Twisted's

    _finish_when_complete = False
    #: Under HTTP/2, the answer's first writes while the body is still arriving (see L{write}).
    _held_answer: list[bytes] | None = None
    _release: IDelayedCall | None = None

    def _over_h2(self) -> bool:
        return getattr(self.channel, "transport", None) is None  # an H2Stream has none

    def write(self, data: bytes) -> None:
        """
        Under HTTP/2, an answer given before the body is all in is held until
        the body is in (see L{finish}), if it is whole by the end of the
        reactor turn that began it: a client answered mid-upload may stop
        sending, ending its stream short of its Content-Length, which h2 takes
        for a protocol error of the whole connection.  An answer still
        unfinished then (a target answering as the upload goes on) is sent as
        it comes, as before.
        """
        body = self.body_producer
        if self._held_answer is not None:
            self._held_answer.append(data)
            return
        if (body is not None and not body.complete and not self.startedWriting and self._release is None
                and self._over_h2()):
            self._held_answer = [data]
            site: Site = self.channel.site  # type: ignore[attr-defined]  # set by every Site's channel
            self._release = site.reactor.callLater(0, self._release_answer)
            return
        super().write(data)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def _release_answer(self) -> None:
        """Send what was held of the answer (when its turn ended unfinished, or the body is in)."""
        release, self._release = self._release, None
        if release is not None and release.active():
            release.cancel()
        held, self._held_answer = self._held_answer, None
        for data in held or ():
            super().write(data)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def finish(self) -> None:
        body = self.body_producer
        if body is not None and not body.complete:
            if not self._over_h2():  # HTTP/1.x
                # Answered before the body was all in: this answer is the
                # connection's last, and the rest of the body is never read.
                body.abandon()
                self.channel.persistent = False
            else:
                # HTTP/2: twisted.web forgets a finished stream, and fails on
                # the request's DATA frames still to come; so the answer
                # (held, if whole at once: see write) ends its stream once
                # the body is in, dropped.
                if self._release is not None and self._release.active():
                    self._release.cancel()  # whole in its turn: held until the body is in
                body.discard()
                self._finish_when_complete = True
                return
        super().finish()  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def connectionLost(self, reason: Failure) -> None:
        if self._early is not None and self._early.active():
            self._early.cancel()
        self._early = None
        if self._release is not None and self._release.active():
            self._release.cancel()
        self._release, self._held_answer = None, None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    # Reading from the caller: its TCP (or TLS) transport under HTTP/1.x,
    # the stream itself under HTTP/2 (which then holds back its flow-control window).

    def _reader(self) -> Any:
        channel = getattr(self, "channel", None)  # None once the request is over
        transport = getattr(channel, "transport", None)
        return transport if transport is not None else channel

    def pause_reading(self) -> None:
        reader = self._reader()
        if reader is not None:
            reader.pauseProducing()

    def resume_reading(self) -> None:
        reader = self._reader()
        if reader is not None and not self.finished:
            reader.resumeProducing()


#: Most bytes held from a caller awaiting a protocol switch before reading
#: from it pauses.
HELD_INPUT = 64 * 1024


class StreamingHTTPChannel(BoundedHTTPChannel):
    """
    twisted.web's HTTP/1.1 channel (bounded: L{BoundedHTTPChannel}),
    letting each request know its request line as soon as it is parsed,
    and asking its transport for the local address once per connection:
    every twisted.web request takes it (C{request.host}), and for TCP that
    is a C{getsockname} system call per request.
    """

    _host: IAddress | None = None
    #: The connection's one idle timer (see L{setTimeout}).
    _idle_call: IDelayedCall | None = None

    def getHost(self) -> IAddress:
        host = self._host
        if host is None:
            host = self._host = super().getHost()  # type: ignore[no-untyped-call]  # Twisted's, untyped
        return host

    # The idle timeout, with one timer per connection.  twisted.web turns it
    # off while each request is handled (C{setTimeout(None)}) and on again
    # after it (C{setTimeout(saved)}): TimeoutMixin cancels its timer and
    # schedules a new one each time, two changes to the reactor's timer heap
    # per request.  Here the timer stays scheduled while the timeout is off;
    # if it comes due then, it does nothing (and the timeout, when turned on
    # again, schedules a new one).  When it fires is unchanged.  A connection
    # taken over by a WebSocket (twisted.web's part of it ends without
    # connectionLost) must say so: L{taken_over}.

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period  # type: ignore[assignment]  # TimeoutMixin says int
        if period is not None:
            call = self._idle_call
            if call is not None and call.active():
                call.reset(period)
            else:
                self._idle_call = self.callLater(period, self._idle_due)  # type: ignore[no-untyped-call]
        return previous

    def resetTimeout(self) -> None:
        call, period = self._idle_call, self.timeOut
        if call is not None and period is not None:
            call.reset(period)

    def taken_over(self) -> None:
        """The connection is no longer HTTP (a WebSocket took it over): its idle timer goes."""
        self.timeOut = None
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()

    def _idle_due(self) -> None:
        self._idle_call = None
        if self.timeOut is not None:
            self.timeoutConnection()  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.taken_over()
        switched, self._switched = self._switched, None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        if switched is not None:
            switched.connectionLost(reason)

    # Protocol switches (an upgrade the front door passes on, answered 101
    # by its target).  While the answer is awaited, what the caller sends
    # after the request's head is held here, not parsed as HTTP; after a
    # 101 the connection's bytes go to the protocol it switched to.

    #: Bytes held while a switch is awaited (None: not awaiting one).
    _held: list[bytes] | None = None
    _held_size = 0
    #: The protocol the connection switched to (None: still HTTP).
    _switched: IProtocol | None = None

    def hold_input(self) -> None:
        """The current request may switch protocols: hold what follows its head."""
        self._held, self._held_size = [], 0

    def release_input(self) -> None:
        """
        The request did not switch protocols.  Bytes the caller sent after
        its head while it waited cannot be HTTP we understand: if there are
        any, the connection closes after the answer.
        """
        held, self._held = self._held, None
        if held:
            self.persistent = False

    def switch_protocols(self, protocol: IProtocol) -> None:
        """
        The connection is no longer HTTP (its 101 is written): its bytes go
        to C{protocol} from now on, the held ones first.  The caller has
        unregistered this channel as the transport's producer and resumed
        the transport (holding may have paused it) before joining it to
        the other side, whose back-pressure then rules.
        """
        self.taken_over()
        held, self._held = self._held or [], None
        self._switched = protocol
        for data in held:
            protocol.dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        # What follows a request's head in the read that completed it comes
        # here, not to dataReceived: held too, or it would be lost (or, after
        # no switch, read as a pipelined request).
        if self._held is not None:
            self._hold(data)
        else:
            super().rawDataReceived(data)

    def _hold(self, data: bytes) -> None:
        assert self._held is not None
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HELD_INPUT and self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()  # (resumed by the switch, or closed)

    def dataReceived(self, data: bytes) -> None:
        if self._switched is not None:
            self._switched.dataReceived(data)
        elif self._held is not None:
            self._hold(data)
        else:
            super().dataReceived(data)  # type: ignore[no-untyped-call]  # Twisted's, untyped

    #: The line being parsed, for the request twisted.web makes from it (L{StreamingRequest}).
    current_line = b""

    def lineReceived(self, line: bytes) -> None:
        # Every line of every head comes here: as little as can be done.
        self.current_line = line
        BoundedHTTPChannel.lineReceived(self, line)


class _ChannelChoice(Protocol):
    """
    Picks a connection's channel at its first bytes, when TLS (if any) has
    negotiated: twisted.web's own for h2, the site's HTTP/1.1 channel otherwise.
    """

    def __init__(self, site: BoundedSite, addr: IAddress | None) -> None:
        self._site = site
        self._addr = addr
        self._channel: IProtocol | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._channel is None:
            transport = self.transport
            assert transport is not None
            h2 = getattr(transport, "negotiatedProtocol", None) == b"h2"
            self._channel = self._site.channel(self._addr, h2)
            self._channel.makeConnection(transport)
        self._channel.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.connectionLost(reason)


class BoundedSite(Site):
    """
    A Site whose HTTP/1.1 connections are bounded by C{limits} on every
    request (L{BoundedHTTPChannel}; a L{remotedialer.server._guard.HeaderGuardFactory}
    in front of it sets them to its own), and which answers HEAD with no
    body (L{HeadRequest}).  HTTP/2, when TLS negotiates it, is twisted.web's
    own channel, bounded by h2.
    """

    requestFactory = HeadRequest
    #: The HTTP/1.1 channel of each connection.
    channel_class: type[BoundedHTTPChannel] = BoundedHTTPChannel
    limits = UpgradeLimits()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        choice = _ChannelChoice(self, addr)
        choice.factory = self
        return choice

    def channel(self, addr: IAddress | None, h2: bool) -> IProtocol:
        """The channel for one connection, set up as twisted.web's Site does its own."""
        if h2:
            protocol: IProtocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]  # Twisted's
            return protocol
        channel: Any = self.channel_class()
        channel.factory = self
        channel.callLater = self.reactor.callLater
        channel.timeOut = self.timeOut
        channel.requestFactory = self.requestFactory
        channel.site = self
        channel.bound(self.limits)
        return channel  # type: ignore[no-any-return]


class ServerSite(BoundedSite):
    """
    A Site whose access log is off unless C{access_log}, which says nothing
    of itself, and which streams the bodies of requests under
    C{stream_prefixes} (e.g. C{[b"/client/"]}) to their resources.
    """

    noisy = False  # no "Starting factory <repr>": the listening port logs where it listens
    requestFactory = StreamingRequest
    channel_class = StreamingHTTPChannel

    def __init__(self, resource: Any, access_log: bool = False, stream_prefixes: tuple[bytes, ...] = (),
                 **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        self.access_log = access_log
        self.stream_prefixes = tuple(stream_prefixes)

    def log(self, request: Request) -> None:
        if self.access_log:
            super().log(request)
