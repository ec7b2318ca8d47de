"""
The server program's forwarders: port forwards (C{--forward}), the HTTP
CONNECT proxy (C{--connect-proxy-listen}) and the SOCKS5 proxy
(C{--socks-listen}); their flags, checks and listening services.

A listener given as a bare port listens on 127.0.0.1; any other Twisted
endpoint description is taken as written.  The proxies follow the front
door's access rules (tokens, open, loopback callers; see
L{remotedialer.server._access}); a port forward serves whoever reaches its
listener, so one beyond loopback is warned about at start.  Every
forwarder listener joins the server's own listeners
(L{remotedialer.server._own.OwnListeners}), which no front-door, proxy or
forwarded connection may target: a C{--forward} to one of them is a usage
error, and a forwarded connection whose target became one (a C{tcp:0}
listener that got that port) is closed.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from remotedialer._tap._listen import Listening, check_listen, loopback_only, plan, port_of
from remotedialer.client._acl import TCP_PROTOS
from remotedialer.protocol._addresses import split_host_port
from remotedialer.protocol._text import printable
from remotedialer.proxies._connectproxy import ConnectProxyFactory
from remotedialer.proxies._forward import PortForwardFactory
from remotedialer.proxies._socksproxy import SocksProxyFactory
from remotedialer.server._access import ProxyAccess, Route
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.server._splice import DIAL_WAIT, Forwarder

__all__ = ["ForwarderOptions", "add_forwarders", "parse_forward", "parse_forwarders"]

log = Logger()

#: Longest --proxy-dial-wait (every answer waits this long for protocols where the caller speaks first).
MAX_DIAL_WAIT = 30.0


class ForwarderOptions:
    """The forwarder flags, mixed into the server program's usage.Options."""

    optParameters = [
        ["connect-proxy-listen", None, None,
         "Serve an HTTP CONNECT proxy into the clients' networks on this endpoint (a bare port: "
         "127.0.0.1); the proxy user name is the client (or target <host>.<client>.tunnel)."],
        ["socks-listen", None, None,
         "Serve a SOCKS5 proxy (CONNECT only) on this endpoint (a bare port: 127.0.0.1); the "
         "username/password user name is the client (or target <host>.<client>.tunnel)."],
        ["proxy-dial-wait", None, DIAL_WAIT,
         "Seconds the proxies wait for a failed dial to be reported before answering success "
         "(the tunnel protocol acknowledges no dial; 0: answer at once).", float],
    ]
    forward_specs: tuple[str, ...] = ()

    def opt_forward(self, spec: str) -> None:
        """LISTEN=CLIENT:proto/host:port: connections to LISTEN (a Twisted endpoint, or a bare
        port: 127.0.0.1) go to proto/host:port behind CLIENT (repeatable)."""
        self.forward_specs = (*self.forward_specs, spec)


def listen_description(text: str) -> str:
    """A forwarder listener: a bare port is 127.0.0.1's; anything else a Twisted description."""
    return f"tcp:{text}:interface=127.0.0.1" if text.isdigit() else text


def parse_forward(spec: str) -> tuple[str, Route]:
    """C{LISTEN=CLIENT:proto/address} -> (listen description, route); ValueError if malformed."""
    listen, eq, target = spec.rpartition("=")
    head, slash, address = target.partition("/")
    client, colon, proto = head.rpartition(":")
    if not (eq and listen and slash and colon and client and address):
        raise ValueError("not LISTEN=CLIENT:proto/host:port")
    if not client.isprintable() or client != client.strip():
        raise ValueError(f"client {printable(client)!r} is not printable text")
    if proto in TCP_PROTOS:
        split_host_port(address)
    elif proto == "unix":
        if not address.startswith("/"):
            raise ValueError("a unix target is an absolute path: CLIENT:unix//path")
    else:
        raise ValueError(f"proto {printable(proto)!r}: use tcp, tcp4, tcp6 or unix")
    return listen_description(listen), Route(client, proto, address)


def parse_forwarders(options: Any) -> None:
    """
    Check the forwarder flags of the server's C{options} (one-line usage
    errors naming the flag); store C{options["forwards"]}, and add the
    listeners to the server's own listeners (C{options["frontdoor_access"].own},
    which already holds the server's other listeners), which no forward
    may target.
    """
    forwards = []
    for spec in options.forward_specs:
        try:
            listen, route = parse_forward(spec)
        except ValueError as e:
            raise usage.UsageError(f"--forward {printable(spec)!r}: {e}") from None
        check_listen("forward", listen)
        forwards.append((listen, route))
    options["forwards"] = forwards
    listens = [listen for listen, _ in forwards]
    for flag in ("connect-proxy-listen", "socks-listen"):
        if options[flag]:
            options[flag] = listen_description(options[flag])
            check_listen(flag, options[flag])
            listens.append(options[flag])
    fixed = [listen for listen in listens if port_of(listen)]  # (port 0: any free port, each its own)
    if len(set(fixed)) != len(fixed):
        raise usage.UsageError("--forward/--connect-proxy-listen/--socks-listen: a listener is given twice")
    if not 0 <= options["proxy-dial-wait"] <= MAX_DIAL_WAIT:
        raise usage.UsageError(f"--proxy-dial-wait must be 0-{MAX_DIAL_WAIT:g} seconds")
    own = options["frontdoor_access"].own
    for listen in listens:
        plan(own, listen)
    for spec, (_, route) in zip(options.forward_specs, forwards, strict=True):
        if route.proto in TCP_PROTOS and own.holds_address(route.address):
            raise usage.UsageError(f"--forward {printable(spec)!r}: the target {printable(route.address)} "
                                   "is this server's own listener")


def add_forwarders(top: MultiService, server: Any, options: Any) -> list[ForwarderStats]:
    """The forwarders' listening services, children of C{top}; each one's counters."""
    from twisted.internet import reactor

    access = ProxyAccess(options["frontdoor_access"])
    limits = options["upgrade_limits"]
    all_stats = []

    def forwarder(name: str, kind: str, target: str = "", dial_wait: float = 0.0) -> Forwarder:
        stats = ForwarderStats(name, kind, target)
        all_stats.append(stats)
        return Forwarder(server, stats, reactor, dial_wait=dial_wait, reaches=server.reaches)

    for listen, route in options["forwards"]:
        if not loopback_only(listen):
            log.warn("--forward {listen}: listens beyond loopback: anyone who reaches it reaches {route}",
                     listen=listen, route=str(route))
        factory: Any = PortForwardFactory(forwarder(f"forward:{listen}", "forward", str(route)), route,
                                          own=access.front_door.own)
        Listening("forward", listen, factory, own=access.front_door.own,
                  backlog=options["backlog"]).setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
    dial_wait = options["proxy-dial-wait"]
    for flag, kind, make in (("connect-proxy-listen", "connect-proxy", ConnectProxyFactory),
                             ("socks-listen", "socks", SocksProxyFactory)):
        listen = options[flag]
        if not listen:
            continue
        if not loopback_only(listen) and access.front_door.open:
            log.warn("--{flag} {listen} with --frontdoor-open: anyone who reaches it reaches every "
                     "client's network", flag=flag, listen=listen)
        factory = make(forwarder(f"{kind}:{listen}", kind, dial_wait=dial_wait), access, limits)
        Listening(flag, listen, factory, own=access.front_door.own,
                  backlog=options["backlog"]).setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
    return all_stats
