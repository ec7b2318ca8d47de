"""
The tunnel's twisted.web resource: authentication at upgrade time, then
Autobahn's WebSocketResource takes the connection over.

Authentication runs before the upgrade so that a refusal is a plain HTTP
answer with the status and body the Go server gives (400 with the error
text, 401 with C{failed authentication}), and so that the authorizer may
return a Deferred.

A tunnel is a WebSocket, which needs HTTP/1.1: a request that arrived over
HTTP/2 (twisted.web negotiates it on TLS listeners when h2 is installed) is
refused with 400 at once, as Go refuses a request that is no upgrade.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from remotedialer.protocol._clientkey import client_key_problem
from remotedialer.protocol._exceptions import AuthorizationError, TooManyAttempts
from remotedialer.protocol._text import printable
from remotedialer.server._forwarded import TrustedProxies
from remotedialer.server._ratelimit import FailureLimiter, address_key
from remotedialer.tunnel._deferred import maybe_deferred
from remotedialer.tunnel._identity import Credentials, Identity
from remotedialer.tunnel._interfaces import ITunnelAuthorizer
from remotedialer.tunnel._logtext import Throttle, address

if TYPE_CHECKING:
    from remotedialer.tunnel._websocket import TunnelServerFactory, TunnelServerProtocol

#: Headers a peer server presents on its link (docs/protocol.md section 2).
PEER_ID_HEADER = "X-API-Tunnel-ID"
PEER_TOKEN_HEADER = "X-API-Tunnel-Token"
#: The example authorizer's header.
CLIENT_ID_HEADER = "X-Tunnel-ID"

#: A tunnel authorizer as a plain callable; an L{ITunnelAuthorizer} works too.
Authorizer = Callable[[IRequest], "str | Credentials | defer.Deferred[str | Credentials | None] | None"]


def header_authorizer(request: IRequest) -> str | None:
    """The Go example server's authorizer: the client key is X-Tunnel-ID."""
    value = request.getHeader(CLIENT_ID_HEADER)
    return value or None


def claimed_id(request: IRequest) -> str:
    """
    Whom an upgrade claims to be, for the limiter (which keeps failures per
    address and claimed id): C{peer <id>} for a peer link, the
    C{X-Tunnel-ID} for a client, or C{""} when it names nobody (mutual TLS).
    Never logged; not a credential.
    """
    # (As bytes: a header that is not UTF-8 is some id too, not an exception here.)
    peer: bytes | None = request.getHeader(PEER_ID_HEADER.encode())
    if peer:
        return "peer " + peer.decode("utf-8", "replace")
    client: bytes | None = request.getHeader(CLIENT_ID_HEADER.encode())
    return client.decode("utf-8", "replace") if client else ""


@implementer(ITunnelAuthorizer)
class _CallableAuthorizer:
    def __init__(self, function: Authorizer) -> None:
        self._function = function

    def authorize(
        self, request: IRequest,
    ) -> str | Credentials | defer.Deferred[str | Credentials | None] | None:
        return self._function(request)


def as_tunnel_authorizer(authorizer: ITunnelAuthorizer | Authorizer) -> ITunnelAuthorizer:
    """An L{ITunnelAuthorizer} as is; a plain C{request -> key} callable wrapped as one."""
    if ITunnelAuthorizer.providedBy(authorizer):
        return authorizer
    if callable(authorizer):
        return _CallableAuthorizer(authorizer)
    raise TypeError("a tunnel authorizer is an ITunnelAuthorizer or a callable(request)")


def handshake_problem(request: Request) -> str | None:
    """
    Why C{request} is not a WebSocket opening handshake we take (RFC 6455
    4.2.1), in the words of Go's gorilla/websocket where it has them; or
    None.  One line, naming no value the caller sent.
    """
    if request.clientproto != b"HTTP/1.1":
        version = printable(request.clientproto, 16)
        return f"a tunnel is a WebSocket upgrade over HTTP/1.1, not {version}"
    headers = request.requestHeaders
    if not _has_token(headers.getRawHeaders(b"connection"), b"upgrade"):
        return "websocket: the client is not using the websocket protocol: " \
               "'upgrade' token not found in 'Connection' header"
    if not _has_token(headers.getRawHeaders(b"upgrade"), b"websocket"):
        return "websocket: the client is not using the websocket protocol: " \
               "'websocket' token not found in 'Upgrade' header"
    if request.method != b"GET":
        return "websocket: the client is not using the websocket protocol: request method is not GET"
    if headers.getRawHeaders(b"sec-websocket-version") != [b"13"]:
        return "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header"
    key = headers.getRawHeaders(b"sec-websocket-key") or []
    if len(key) != 1 or not _is_websocket_key(key[0]):
        return "websocket: not a websocket handshake: " \
               "'Sec-WebSocket-Key' header must be Base64 encoded value of 16-byte length"
    for name in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
        # (Autobahn quotes what it cannot parse here, raw, in its status line and log)
        if not all(_VISIBLE.fullmatch(value) for value in headers.getRawHeaders(name) or ()):
            return f"websocket: the '{name.decode().title()}' header must be printable ASCII"
    return None


#: A header value of visible ASCII, spaces and tabs (RFC 9110 5.5, without obs-text).
_VISIBLE = re.compile(rb"[\x20-\x7e\t]*")


def _has_token(values: Sequence[bytes] | None, token: bytes) -> bool:
    """A comma-separated header (all its lines) names C{token}, in any case."""
    return any(part.strip().lower() == token for value in values or () for part in value.split(b","))


def _is_websocket_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except binascii.Error:
        return False


class _IdentifiedFactory:
    """Hands the identity (and the caller's address, if a trusted proxy named it) to the protocol."""

    def __init__(self, factory: TunnelServerFactory, identity: Identity, forwarded: IAddress | None) -> None:
        self._factory = factory
        self._identity = identity
        self._forwarded = forwarded

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        protocol = cast("TunnelServerProtocol", self._factory.buildProtocol(addr))  # the factory's protocol
        protocol.identity = self._identity
        if self._forwarded is not None:
            protocol.client_address = self._forwarded
        return protocol


class TunnelResource(Resource):
    """The tunnel path (C{/connect} in the Go example server)."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        websocket_factory: TunnelServerFactory,
        authorizer: ITunnelAuthorizer | Authorizer,
        peers: Callable[[], dict[str, str]],
        owner_conflict: Callable[[Identity], str | None] | None = None,
        limiter: FailureLimiter | None = None,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self._factory = websocket_factory
        self._authorizer = as_tunnel_authorizer(authorizer)
        self._peers = peers
        #: Why C{identity} may not connect now (its key is held with another
        #: credential), or None: the server's one-key-one-owner rule.
        self._owner_conflict = owner_conflict
        #: Failed authentications from one address are delayed and limited,
        #: so tokens cannot be guessed at speed.
        self._limiter = limiter
        #: Whose X-Forwarded-For names the caller (logs, the limiter, the session's address).
        self._proxies = trusted_proxies if trusted_proxies is not None else TrustedProxies()
        self._peer_refusals = Throttle(
            limiter.clock if limiter is not None else _reactor(), TunnelResource.log, "refused peer links")

    def render(self, request: Request) -> bytes | int:
        problem = handshake_problem(request)
        if problem is not None:
            # Answered here, before any authorizer: Autobahn never sees a
            # request that is not an upgrade (its status page, its
            # ?redirect=, its handshake errors quoting raw header values).
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return problem.encode() + b"\n"
        # The client may leave while the authorizer decides: learn it from
        # the request (HTTP/2 has no channel transport to look at).
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        caller = self._proxies.client_address(request)

        def identify() -> defer.Deferred[Identity]:
            return maybe_deferred(self._identify, request, caller)

        d: defer.Deferred[Identity]
        if self._limiter is not None:
            d = self._limiter.judge(address_key(caller), identify, claimed_id(request))
        else:
            d = identify()
        d.addCallbacks(self._upgrade, self._refuse,
                       callbackArgs=(request, gone, caller), errbackArgs=(request, gone, caller))
        d.addErrback(lambda f: self.log.failure("tunnel upgrade failed", f))
        return NOT_DONE_YET

    def _identify(self, request: Request, caller: IAddress) -> Identity | defer.Deferred[Identity]:
        peer = self._peer_identity(request, caller)
        if peer is not None:
            return peer
        d = maybe_deferred(self._authorizer.authorize, request)
        return d.addCallback(self._client_identity).addCallback(self._check_owner)

    def _check_owner(self, identity: Identity) -> Identity:
        conflict = self._owner_conflict(identity) if self._owner_conflict is not None else None
        if conflict is not None:
            raise _Conflict(conflict)
        return identity

    def _peer_identity(self, request: Request, caller: IAddress) -> Identity | None:
        peer_id = request.getHeader(PEER_ID_HEADER)
        token = request.getHeader(PEER_TOKEN_HEADER)
        if not peer_id or not token:
            return None
        expected = self._peers().get(peer_id)
        if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
            return Identity(peer_id, is_peer=True)
        if not peer_id.isprintable() or peer_id != peer_id.strip():
            raise AuthorizationError("peer id must be printable text")
        # A request claiming to be a peer with a wrong token is refused, not
        # tried as a client.  Logged a few times per interval, then summed up.
        self._peer_refusals.warn(
            "refused peer link claiming id {peer_id} from {addr}: unknown peer or wrong token",
            session="tunnel", peer_id=printable(peer_id), addr=address(caller))
        raise _Unauthorized()

    @staticmethod
    def _client_identity(answer: Credentials | str | bytes | None) -> Identity:
        fingerprint = None
        client_key: str | bytes | None
        if isinstance(answer, Credentials):
            client_key, fingerprint = answer.client_key, answer.fingerprint
        else:
            client_key = answer
        if isinstance(client_key, bytes):
            client_key = client_key.decode("utf-8", "replace")
        if not client_key:
            raise _Unauthorized()
        problem = client_key_problem(client_key)
        if problem is not None:
            raise AuthorizationError(problem)
        return Identity(client_key, fingerprint=fingerprint)

    def _upgrade(self, identity: Identity, request: Request, gone: list[Failure], caller: IAddress) -> None:
        if gone:
            return  # the client went away while we authorized it
        # twisted.web's channel is done with the connection (ServerSite's
        # keeps its idle timer through a request, see remotedialer.server._site).
        taken_over = getattr(request.channel, "taken_over", None)
        if taken_over is not None:
            taken_over()
        forwarded = caller if caller is not request.getClientAddress() else None
        body = WebSocketResource(_IdentifiedFactory(self._factory, identity, forwarded)).render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _refuse(self, failure: Failure, request: Request, gone: list[Failure], caller: IAddress) -> None:
        if failure.check(_Unauthorized):
            code, text = 401, "failed authentication"
        elif failure.check(_Conflict):
            code, text = 409, failure.getErrorMessage()
        elif failure.check(TooManyAttempts):
            code, text = 429, failure.getErrorMessage()
            limited = failure.value
            if not gone and isinstance(limited, TooManyAttempts):
                request.setHeader(b"Retry-After", str(math.ceil(limited.retry_after)).encode())
        else:
            code, text = 400, failure.getErrorMessage()
            if not failure.check(AuthorizationError):
                self.log.failure("authorizer failed", failure)
        self.log.info("refused tunnel from {addr}: {code} {text}",
                      addr=address(caller), code=code, text=printable(text))
        if gone:
            return
        request.setResponseCode(code, _REASONS.get(code))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.write(text.encode("utf-8"))
        request.finish()


#: Reason phrases twisted.web does not know (it would say "429 Unknown Status").
_REASONS = {429: b"Too Many Requests"}


def _reactor() -> IReactorTime:
    from twisted.internet import reactor

    return cast("IReactorTime", reactor)


class _Unauthorized(Exception):
    """The authorizer said no."""


class _Conflict(Exception):
    """The key is connected with another credential."""
