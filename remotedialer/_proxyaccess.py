"""
Who may use the server's proxies (HTTP CONNECT, SOCKS5), and which
client's tunnel a request goes through.

The rules are the front door's (L{FrontDoorAccess}), so that one
configuration governs every way into the clients' networks:

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

import ipaddress

import attrs
from twisted.internet.interfaces import IAddress

from remotedialer._auth import token_matches
from remotedialer._frontdoor import FrontDoorAccess

__all__ = ["TUNNEL_SUFFIX", "ProxyAccess", "Refusal", "Route", "split_tunnel_host"]

#: Hosts ending so name their client: C{<host>.<client>.tunnel}.
TUNNEL_SUFFIX = ".tunnel"
#: Longest client key we take from a user name or host.
MAX_CLIENT_KEY = 255


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


def _good_key(key: str) -> bool:
    """Client keys end up in logs and metrics: printable text, no spaces at the ends."""
    return 0 < len(key) <= MAX_CLIENT_KEY and key.isprintable() and key == key.strip() and "/" not in key


def _is_loopback_caller(caller: IAddress) -> bool:
    host = getattr(caller, "host", None)
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # (::ffff:127.0.0.1, a dual-stack listener's view)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


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
        if self.front_door.open or _is_loopback_caller(caller):
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
        if not _good_key(client):
            return Refusal("no-client", "the client name must be printable text, without '/'")
        if not host or not host.isprintable() or "/" in host or " " in host:
            return Refusal("bad-request", "the target host must be printable text, without '/' or spaces")
        if not 0 < port < 65536:
            return Refusal("bad-request", "the target port must be 1-65535")
        route = Route.tcp(client, host, port)
        if self.front_door.nested(route.address):
            return Refusal("own-listener", "the target is this server's own listener")
        return route
