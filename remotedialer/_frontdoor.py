"""
The HTTP front door of the Go example server:
``GET /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<s>]`` fetches
``<scheme>://<host>/<path>`` through the tunnel of ``<clientKey>`` and
streams the response back.

The body is relayed with the producer/consumer APIs (the upstream response
is registered as the downstream request's producer), so a slow downstream
reader slows the tunnel stream instead of growing memory, and a downstream
reader that goes away stops the upstream transfer.
"""

from __future__ import annotations

import math

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from remotedialer._endpoint import ClientNotConnected

#: Go's default when ?timeout= is not given.
DEFAULT_TIMEOUT = 15.0
#: Longest wait for a response start that a caller may ask for.
MAX_TIMEOUT = 3600.0

#: Headers that belong to one hop, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"host",
}


class _BodyRelay(Protocol):
    """Streams an upstream response body into the downstream request."""

    def __init__(self, request) -> None:
        self._request = request
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self._request.write(data)

    def connectionLost(self, reason: Failure) -> None:
        if self._request.channel is not None:  # None once the downstream reader left
            self._request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _downstream_gone(request) -> bool:
    """
    The downstream reader is gone, or going: a TCP transport stops its
    producer (our upstream body) before the request hears of the loss.
    """
    if request.finished or request._disconnected or request.channel is None:
        return True
    transport = request.channel.transport
    return transport is None or transport.disconnecting or not getattr(transport, "connected", True)


def _timed_out(result, timeout: float):
    raise defer.TimeoutError(f"no response within {timeout:g} s")


class FrontDoor(Resource):
    """The ``/client/`` resource of a server (see module docstring)."""

    isLeaf = True
    log = Logger()

    def __init__(self, server, reactor=None) -> None:
        super().__init__()
        self._server = server
        self._reactor = reactor if reactor is not None else server.reactor
        self._pool = HTTPConnectionPool(self._reactor, persistent=False)

    def render(self, request):
        parts = request.postpath
        if len(parts) < 3 or not all(parts[:3]):
            request.setResponseCode(404)
            return b"usage: /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<seconds>]\n"
        client_key, scheme, host = (p.decode("utf-8", "replace") for p in parts[:3])
        if scheme not in ("http", "https"):
            request.setResponseCode(400)
            return f"unsupported scheme {scheme!r}\n".encode()
        try:
            timeout = float(request.args.get(b"timeout", [DEFAULT_TIMEOUT])[0])
        except ValueError:
            timeout = math.nan
        if not 0 < timeout <= MAX_TIMEOUT:
            request.setResponseCode(400)
            return f"timeout must be a number of seconds, over 0 and at most {MAX_TIMEOUT}\n".encode()
        # The path as the client sent it (postpath is already unquoted, and
        # unquoting %3F or %2F would change what the target is asked for).
        raw_path, _, query = request.uri.partition(b"?")
        path = b"/".join(raw_path.split(b"/")[1 + len(request.prepath) + 3:])
        kept = b"&".join(q for q in query.split(b"&") if q and not q.startswith(b"timeout="))
        url = f"{scheme}://{host}/".encode() + path + (b"?" + kept if kept else b"")
        headers = Headers({k: v for k, v in request.requestHeaders.getAllRawHeaders()
                           if k.lower() not in HOP_BY_HOP})
        agent = self._server.agent(client_key, pool=self._pool)
        body = None
        if request.method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            from twisted.web.client import FileBodyProducer

            body = FileBodyProducer(request.content)
        d = defer.maybeDeferred(agent.request, request.method, url, headers, body)
        # Agent turns a cancelled request into ResponseNeverReceived, which
        # addTimeout would not recognise as its own timeout: say so ourselves.
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=_timed_out)
        relays: list[_BodyRelay] = []

        def downstream_gone(_):
            # The reader left: stop fetching, or stop the body (closing the stream).
            d.cancel()
            for relay in relays:
                if relay.transport is not None:
                    relay.transport.stopProducing()

        request.notifyFinish().addErrback(downstream_gone)
        d.addCallback(self._respond, request, relays)
        d.addErrback(self._failed, request, url, relays)
        return NOT_DONE_YET

    def _respond(self, response, request, relays: list) -> defer.Deferred:
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        if isinstance(response.length, int):
            request.setHeader(b"Content-Length", str(response.length).encode())
        relay = _BodyRelay(request)
        relays.append(relay)
        response.deliverBody(relay)
        relay.done.addCallback(lambda _: None if _downstream_gone(request) else request.finish())
        return relay.done

    def _failed(self, failure: Failure, request, url: bytes, relays: list) -> None:
        if _downstream_gone(request):
            return  # the reader left first; stopping the upstream was our doing
        if relays or request.startedWriting:
            # The upstream's status and headers are already ours: the only
            # honest way to say the body is cut short is to close the
            # connection early (what was sent is flushed; the reader sees
            # fewer bytes than Content-Length, or no last chunk).
            self.log.warn("front door: {url} failed mid-body: {error}", url=url, error=failure.getErrorMessage())
            if request.channel is not None:
                request.channel.transport.loseConnection()
            return
        if failure.check(defer.TimeoutError):
            code, text = 504, f"timeout waiting for {url.decode(errors='replace')}"
        elif failure.check(ClientNotConnected):
            code, text = 500, failure.getErrorMessage()
        else:
            code, text = 502, failure.getErrorMessage() or failure.type.__name__
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.write(text.encode() + b"\n")
        request.finish()
