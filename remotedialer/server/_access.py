"""
Who may call into the clients' networks through this server (the front
door, the HTTP CONNECT and SOCKS5 proxies, the port forwards), and which
client's tunnel a proxy request goes through: one rule for every way in.

L{FrontDoorAccess.caller_refusal} is the rule, for every way in:

  - with front-door tokens (a L{TokenFile}: SHA-256 digests, each with the
    clients it may use), the caller must present one of them, and may use
    only the clients of its scope (any other: refused, 403 or SOCKS5's
    "not allowed", in one line naming neither the token nor other
    clients);
  - else, with the front door open, anyone may;
  - else only loopback callers may (by the one loopback rule,
    L{remotedialer.protocol._addresses.is_loopback});
  - a target that is one of this server's own listeners is refused
    (L{remotedialer.server._own.OwnListeners}: by port bound and by
    address in any spelling, C{0x7f.1} as C{127.0.0.1}).

Where the token comes from depends on the way in.  The front door takes
C{Proxy-Authorization: Bearer <token>}, or, when that header is absent,
C{Authorization: Bearer <token>} (what kubectl sends for a kubeconfig's
user token): a token taken from C{Authorization} was ours, so that header
is never passed to the target (L{FrontDoorAccess.consumed_header}).  The
proxies take it as the proxy password (the C{TOKEN} of
C{http://foo:TOKEN@127.0.0.1:8124}, or of SOCKS5's username/password
method), or as C{Proxy-Authorization: Bearer}.  Port forwards take none:
the operator chose their one target, and they serve whoever reaches
their listener.

The client is named by the proxy user name (C{foo} above), the target
staying exactly what the tool asked for, so TLS verification and SNI are
untouched.  Tools that cannot send proxy credentials name it in the host
instead: C{<host>.<client>.tunnel}, e.g. C{10.0.0.5.foo.tunnel:6443} is
C{10.0.0.5:6443} behind client C{foo} (the client is the last label before
C{.tunnel}, so such clients' ids cannot contain dots; and the tool then
sends that name as SNI, so it has to be told the real server name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
from twisted.internet.interfaces import IAddress
from twisted.web.iweb import IRequest

from remotedialer.protocol._addresses import is_loopback
from remotedialer.protocol._clientkey import client_key_problem
from remotedialer.server._auth import ClientScope, token_scope
from remotedialer.server._own import OwnListeners

__all__ = [
    "TUNNEL_SUFFIX",
    "FrontDoorAccess",
    "ProxyAccess",
    "Refusal",
    "Route",
    "is_loopback_caller",
    "split_tunnel_host",
]

#: Hosts ending so name their client: C{<host>.<client>.tunnel}.
TUNNEL_SUFFIX = ".tunnel"


@attrs.frozen
class Route:
    """Where a forwarded connection goes: C{proto}/C{address} behind C{client_key}."""

    client_key: str
    proto: str
    address: str

    @classmethod
    def tcp(cls, client_key: str, host: str, port: int) -> Route:
        """To C{host:port} (an IPv6 host is put in brackets, the Connect message's form)."""
        return cls(client_key, "tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def __str__(self) -> str:
        return f"{self.client_key}:{self.proto}/{self.address}"


@attrs.frozen
class Refusal:
    """Why a request may not pass: a L{FAILURE_REASONS} word, and one line for people."""

    reason: str
    text: str


def split_tunnel_host(host: str) -> tuple[str, str] | None:
    """C{(host, client)} of C{<host>.<client>.tunnel} (any case), or None for another host."""
    if not host.lower().endswith(TUNNEL_SUFFIX):
        return None
    inner, dot, client = host[: -len(TUNNEL_SUFFIX)].rpartition(".")
    if not dot or not inner or not client:
        return None
    return inner, client


def is_loopback_caller(caller: IAddress | None) -> bool:
    """The caller at C{caller} (a Twisted address) is on this machine's loopback."""
    host = getattr(caller, "host", None)
    return isinstance(host, str) and is_loopback(host)


def _bearer(value: bytes | None) -> bytes | None:
    """The token of a C{Bearer <token>} header value, or None."""
    scheme, _, token = (value or b"").partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


@attrs.frozen
class FrontDoorAccess:
    """
    Who may use the front door (and the proxies, through L{ProxyAccess}),
    and what the front door passes on.

    By default only loopback callers are answered (a front door on the
    tunnel's listener is otherwise an open proxy into every client's
    network).  With C{token_hashes}, a caller anywhere presenting a token
    whose SHA-256 is listed is answered, for the clients the token may
    use; with C{open}, anyone.  The caller's C{Authorization} and
    C{Cookie} are not sent to targets unless C{forward_credentials}, and
    an C{Authorization} that carried the front-door token never is.
    Targets that are this server's own listeners (C{own}, which the
    programs fill in as each listener binds) are refused, so the front
    door cannot be nested into itself.
    """

    #: The accepted tokens' SHA-256 digests: a mapping to the clients each
    #: may use (a L{TokenFile}, re-read on SIGHUP), or plain digests (each
    #: for every client).
    token_hashes: Iterable[bytes] | Mapping[bytes, ClientScope] | None = None
    open: bool = False
    forward_credentials: bool = False
    #: This server's own listeners (shared: listeners join as they bind).
    own: OwnListeners = attrs.Factory(OwnListeners)

    def caller_refusal(self, caller: IAddress | None, token: bytes | None,
                       client_key: str | None = None) -> Refusal | None:
        """
        The rule: why a caller at C{caller} presenting C{token} (None:
        none) may not use client C{client_key}, or None if it may.  With
        C{client_key} None only the caller is judged (the client is not
        named yet: the proxies' authentication step).
        """
        if self.token_hashes is not None:
            scope = token_scope(token, self.token_hashes) if token else None
            if scope is None:
                return Refusal("unauthenticated", "a valid front-door token is required")
            if client_key is not None and not scope.allows(client_key):
                return Refusal("client-not-allowed", "the token presented is not for this client")
            return None
        if self.open or is_loopback_caller(caller):
            return None
        return Refusal("caller-refused",
                       "only loopback callers are served (configure front-door tokens, or open it)")

    def _token(self, request: IRequest) -> tuple[bytes | None, bool]:
        """The front-door token a request presents, and whether it came in C{Authorization}."""
        proxy = request.getHeader(b"Proxy-Authorization")
        if proxy is not None:
            return _bearer(proxy), False
        token = _bearer(request.getHeader(b"Authorization"))
        return token, token is not None

    def refusal(self, request: IRequest) -> tuple[int, str] | None:
        """
        Why C{request} may not pass (status, one line), or None.  The client
        is the first segment of its path below the front door
        (C{request.postpath[0]}, as L{remotedialer.frontdoor._request.parse}
        reads it).  No valid token: 401 if it came in C{Authorization}
        (kubectl's), else 407.
        """
        client_key = (request.postpath or [b""])[0].decode("utf-8", "replace")
        token, in_authorization = self._token(request) if self.token_hashes is not None else (None, False)
        refused = self.caller_refusal(request.getClientAddress(), token, client_key)
        if refused is None:
            return None
        if refused.reason == "unauthenticated":
            return (401 if in_authorization else 407), (
                "front door: a valid front-door token is required "
                "(in Proxy-Authorization or Authorization, as Bearer)")
        return 403, f"front door: {refused.text}"

    def consumed_header(self, request: IRequest) -> bytes | None:
        """
        The caller's header that carried its front-door token, which is
        never passed to the target (C{b"authorization"}), or None.
        (C{Proxy-Authorization} is one hop's, never passed on anyway.)
        """
        if self.token_hashes is None:
            return None
        return b"authorization" if self._token(request)[1] else None

    def nested(self, host: str, port: int) -> bool:
        """The target C{host} (any spelling, or a name) on C{port} is one of this server's own listeners."""
        return self.own.holds(host, port)


@attrs.frozen
class ProxyAccess:
    """The proxies' access rules: the front door's (see module docstring)."""

    front_door: FrontDoorAccess = attrs.Factory(FrontDoorAccess)

    @property
    def needs_password(self) -> bool:
        """Callers must present a token (as the proxy password)."""
        return self.front_door.token_hashes is not None

    def caller_refusal(self, caller: IAddress, password: bytes | None) -> Refusal | None:
        """
        Why C{caller}, presenting C{password} (None: no credentials), may not
        pass whatever client it names; or None.
        """
        refused = self.front_door.caller_refusal(caller, password)
        if refused is not None and refused.reason == "unauthenticated":
            return Refusal("unauthenticated", "a valid proxy password (a front-door token) is required")
        return refused

    def admit(self, caller: IAddress, password: bytes | None, user: str | None, host: str,
              port: int) -> Route | Refusal:
        """
        The route of a proxy request for C{host:port} by proxy user C{user}
        from C{caller} presenting C{password}, or why it may not pass: the
        caller, then the route (L{route}), then whether the token may use
        the route's client.
        """
        refused = self.caller_refusal(caller, password)
        if refused is not None:
            return refused
        route = self.route(user, host, port)
        if isinstance(route, Refusal):
            return route
        return self.front_door.caller_refusal(caller, password, route.client_key) or route

    def route(self, user: str | None, host: str, port: int) -> Route | Refusal:
        """
        The route for a request for C{host:port} by proxy user C{user}
        (None or empty: no user name): see the module docstring.
        """
        client = user or None
        suffixed = split_tunnel_host(host)
        if suffixed is not None:
            host, named = suffixed
            if client is not None and client != named:
                return Refusal("no-client", "the proxy user name and the host's .tunnel suffix "
                                            "name different clients")
            client = named
        if client is None:
            return Refusal("no-client", "no client named: use the proxy user name <client>, "
                                        "or the host <host>.<client>.tunnel")
        problem = client_key_problem(client)
        if problem is not None:
            return Refusal("no-client", f"the client name is not a client key: {problem}")
        if not host or not host.isprintable() or "/" in host or " " in host:
            return Refusal("bad-request", "the target host must be printable text, without '/' or spaces")
        if not 0 < port < 65536:
            return Refusal("bad-request", "the target port must be 1-65535")
        if self.front_door.nested(host, port):
            return Refusal("own-listener", "the target is this server's own listener")
        return Route.tcp(client, host, port)
