"""
The HTTP front door of the Go example server:
``GET /client/<clientKey>/<scheme>/<host>[/<path>][?timeout=<s>]`` fetches
``<scheme>://<host>/<path>`` through the tunnel of ``<clientKey>`` and
streams the response back.

L{FrontDoor} asks the server's caller-access rule
(L{remotedialer.server._access}) who may pass, reads the request into a
L{Fetch} (L{remotedialer.frontdoor._request}) and hands it to an
L{Exchange} (L{remotedialer.frontdoor._exchange}), which does the rest.

https targets are verified by the IPolicyForHTTPS the FrontDoor is given
(default: the system trust store); L{InsecureTLSPolicy} verifies nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from remotedialer.frontdoor._exchange import Exchange, Upstreams
from remotedialer.frontdoor._pool import IDLE_TIMEOUT, MAX_IDLE, ClientPools
from remotedialer.frontdoor._request import DROPPED, HOP_BY_HOP, Fetch, error_body, parse
from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._server import Server
from remotedialer.server._site import StreamingHTTPChannel

__all__ = ["FrontDoor", "refuse_unknown_client"]


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


class FrontDoor(Resource):
    """
    The ``/client/`` resource of a server (see module docstring).

    @param tls_policy: verifies https targets (default: the system trust
        store, C{BrowserLikePolicyForHTTPS()}).
    @param response_head_bytes: largest response head (status line and
        headers) read from a target; C{response_headers} the most header
        lines.  Over either: 502 (see L{remotedialer.frontdoor._headlimit}).
    @param access: who may use it (L{FrontDoorAccess}; default: loopback
        callers only, credentials not forwarded).
    @param idle_connections: kept-alive connections per client and target
        (0: a new tunnel stream for every request); C{idle_timeout} how long
        one may idle (see L{remotedialer.frontdoor._pool}).
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
        self._dropped = HOP_BY_HOP if self._access.forward_credentials else DROPPED
        reactor = reactor if reactor is not None else server.reactor
        #: Kept-alive connections, one pool per client key (L{ClientPools}).
        self.pools = ClientPools(reactor, server.sessions, max_idle=idle_connections,
                                 idle_timeout=idle_timeout)
        self.upstreams = Upstreams(
            opener=server,
            tls_policy=tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS(),
            pools=self.pools,
            head_limits=(response_head_bytes, response_headers),
            reactor=reactor,
            log=self.log,
        )

    def render(self, request: Request) -> bytes | int:
        refusal = self._access.refusal(request)
        if refusal is not None:
            challenge = {401: b"WWW-Authenticate", 407: b"Proxy-Authenticate"}.get(refusal[0])
            if challenge is not None:
                request.setHeader(challenge, b"Bearer")
            return error_body(request, *refusal)
        consumed = self._access.consumed_header(request)  # the token's own header: never passed on
        dropped = self._dropped if consumed is None else self._dropped | {consumed}
        channel = request.channel
        upgradable = isinstance(channel, StreamingHTTPChannel)  # (HTTP/1.1 on the server's site)
        fetch = parse(request, dropped, close=not self.pools.max_idle, upgradable=upgradable)
        if not isinstance(fetch, Fetch):
            return error_body(request, *fetch)
        if self._access.nested(fetch.host, fetch.port):
            return error_body(request, 403, "front door: the target is this server's own listener")
        if fetch.upgrade is not None:
            cast(StreamingHTTPChannel, channel).hold_input()
        Exchange(self.upstreams, request, fetch).start()
        return NOT_DONE_YET
