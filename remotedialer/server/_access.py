"""
Who may call into the clients' networks through this server (the front
door, the HTTP CONNECT and SOCKS5 proxies, the port forwards), and which
client's tunnel a proxy request goes through: one rule for every way in.

L{FrontDoorAccess} is the rule; L{ProxyAccess} reads it for the proxies,
so that one configuration governs every way in:

  - with front-door tokens, the proxy password must be one of them (the
    C{TOKEN} of C{http://foo:TOKEN@127.0.0.1:8124}, or of SOCKS5's
    username/password method);
  - else, with the front door open, anyone may;
  - else only loopback callers may;
  - a target that is one of this server's own listeners is refused.

The client is named by the proxy user name (C{foo} above), the target
staying exactly what the tool asked for, so TLS verification and SNI are
untouched.  Tools that cannot send proxy credentials name it in the host
instead: C{<host>.<client>.tunnel}, e.g. C{10.0.0.5.foo.tunnel:6443} is
C{10.0.0.5:6443} behind client C{foo} (the client is the last label before
C{.tunnel}, so such clients' ids cannot contain dots; and the tool then
sends that name as SNI, so it has to be told the real server name).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.internet.interfaces import IAddress
from twisted.web.iweb import IRequest

from remotedialer.protocol._addresses import is_loopback, split_host_port
from remotedialer.protocol._clientkey import client_key_problem
from remotedialer.server._auth import token_matches

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

    def refusal(self, request: IRequest) -> tuple[int, str] | None:
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
        if is_loopback_caller(request.getClientAddress()):
            return None
        return 403, ("front door: only loopback callers are answered "
                     "(configure front-door tokens, or open it)")

    def nested(self, host_port: str) -> bool:
        """C{host:port} is one of this server's own listeners."""
        try:
            host, port = split_host_port(host_port)
        except ValueError:
            return False
        return port in self.own_ports and is_loopback(host)


@attrs.frozen
class ProxyAccess:
    """The proxies' access rules, from the front door's (see module docstring)."""

    front_door: FrontDoorAccess = attrs.Factory(FrontDoorAccess)

    @property
    def needs_password(self) -> bool:
        """Callers must present a token (as the proxy password)."""
        return self.front_door.token_hashes is not None

    def caller_refusal(self, caller: IAddress, password: bytes | None) -> Refusal | None:
        """Why C{caller}, presenting C{password} (None: no credentials), may not pass; or None."""
        hashes = self.front_door.token_hashes
        if hashes is not None:
            if password and token_matches(password, hashes):
                return None
            return Refusal("unauthenticated", "a valid proxy password (a front-door token) is required")
        if self.front_door.open or is_loopback_caller(caller):
            return None
        return Refusal("caller-refused",
                       "only loopback callers are served (configure front-door tokens, or open it)")

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
        route = Route.tcp(client, host, port)
        if self.front_door.nested(route.address):
            return Refusal("own-listener", "the target is this server's own listener")
        return route
