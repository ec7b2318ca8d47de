"""
What every listener of the programs shares: a description checked at
option time (one usage line, never a traceback), a listening service whose
failure to listen is one line and exit status 1, the port and interface of
a description, and whether a listener is on loopback only (to warn about
those beyond it), by the one loopback rule
(L{remotedialer.protocol._addresses.is_loopback}).

The server's own listeners (L{remotedialer.server._own.OwnListeners}):
each listener joins them twice, as its description says at option time
(L{plan}: so a C{--forward} to one is refused at start) and with the
address and port it bound when it starts listening (L{Listening} given
C{own}: so a C{tcp:0} listener is known by the port it got).  This host's
names and addresses, for listeners on every interface, are
L{this_host}'s.

Every listener takes the programs' C{--backlog} (the kernel's queue of
connections not yet accepted: Twisted's default, 50, overflows when a
thousand agents redial a restarted server at once, and each overflowed one
waits for its SYN to be resent), unless its description names its own
C{backlog=}.  A description may be wrapped in C{haproxy:} (Twisted's PROXY
protocol v1/v2 listener, for a load balancer that says who the caller is):
its port and interface are the wrapped description's.  The PROXY header
comes before TLS, so C{haproxy:ssl:} (TLS first) is refused: the server's
own TLS (C{--tls-cert}) goes inside C{haproxy:tcp:}.

A listener in front of the request-head guard (L{HeaderGuardFactory})
stops accepting while half of the guard's pending-heads limit is taken,
and accepts again below a quarter (L{_AcceptGate}): in a storm (thousands
of agents redialing at once, their heads slow to come: TLS handshakes, a
busy agent) the connections past that wait in the kernel's backlog, to be
served in turn, instead of being accepted only for the guard to close them
at its limit.  The limit itself, and what it protects against, is
unchanged.
"""

from __future__ import annotations

import re
import socket
import weakref
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.python import usage
from zope.interface import alsoProvides, implementer

from remotedialer.protocol._addresses import is_loopback
from remotedialer.protocol._text import printable
from remotedialer.server._guard import HeaderGuardFactory
from remotedialer.server._own import OwnListeners

__all__ = ["DEFAULT_BACKLOG", "Listening", "check_backlog", "check_listen", "interface_of", "loopback_only",
           "plan", "port_of", "this_host", "with_backlog"]

#: The interface= of an endpoint description (colons in it escaped, C{\\:}).
_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\.|[^:\\])*)")
#: A backlog= of an endpoint description.
_BACKLOG = re.compile(r"(?:^|(?<!\\):)backlog=")
#: The listen backlog of the programs' listeners (--backlog); Twisted's is 50.
DEFAULT_BACKLOG = 4096
#: Endpoint kinds that take backlog= (and haproxy: around them).
_BACKLOG_KINDS = ("tcp", "tcp6", "ssl", "unix")
_PROXY_PREFIX = "haproxy:"


def _unwrapped(description: str) -> str:
    """The description a C{haproxy:} one wraps; any other as it is."""
    while description.startswith(_PROXY_PREFIX):
        description = description[len(_PROXY_PREFIX):]
    return description


def port_of(description: str) -> int | None:
    """The port of a tcp:/tcp6:/ssl: endpoint description (positional or port=), if it has one."""
    kind, _, rest = _unwrapped(description).partition(":")
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    for i, part in enumerate(rest.split(":")):
        value = part[len("port="):] if part.startswith("port=") else part if i == 0 else ""
        if value.isdigit():
            return int(value)
    return None


def interface_of(description: str) -> str:
    """The C{interface=} of an endpoint description, unescaped; empty without one (every interface)."""
    found = _INTERFACE.search(description)
    return re.sub(r"\\(.)", r"\1", found.group(1)) if found is not None else ""


def loopback_only(description: str) -> bool:
    """
    The endpoint C{description} cannot be reached from another host: a
    tcp:/tcp6:/ssl: one bound to a loopback interface (C{127.0.0.1},
    C{\\:\\:1}, C{\\:\\:ffff\\:127.0.0.1}, C{localhost}), or not a network one.
    """
    kind = _unwrapped(description).partition(":")[0]
    if kind not in ("tcp", "tcp6", "ssl"):
        return True
    interface = interface_of(description)
    return bool(interface) and is_loopback(interface)


def this_host() -> tuple[list[str], list[str]]:
    """
    This host's name and the addresses it resolves to
    (C{getaddrinfo(gethostname())}; none if that fails): what the own-
    listener rule knows of this host beyond loopback.  Not every address of
    every interface: one missing from that lookup, or added later, is not
    known (the standard library lists no interface addresses).
    """
    name = socket.gethostname()
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        found = []
    return [name], sorted({str(sockaddr[0]) for *_, sockaddr in found})


def plan(own: OwnListeners, description: str) -> None:
    """Add the listener C{description} describes to C{own}, as it will bind (port 0: not yet)."""
    port = port_of(description)
    if port:
        own.add(interface_of(description), port)


@implementer(IStreamServerEndpoint)
class _Recorded:
    """An endpoint whose listening ports join C{own} with the address and port they bound."""

    def __init__(self, endpoint: IStreamServerEndpoint, own: OwnListeners) -> None:
        self._endpoint = endpoint
        self._own = own

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        def bound(port: IListeningPort) -> IListeningPort:
            address = port.getHost()
            host, number = getattr(address, "host", None), getattr(address, "port", None)
            if isinstance(host, str) and isinstance(number, int):
                self._own.add(host, number)
            return port

        return self._endpoint.listen(protocolFactory).addCallback(bound)


def with_backlog(description: str, backlog: int) -> str:
    """C{description} with C{backlog=} added, for a kind that takes one and has none."""
    kind = _unwrapped(description).partition(":")[0]
    if kind not in _BACKLOG_KINDS or _BACKLOG.search(description):
        return description
    return f"{description}:backlog={backlog}"


def check_backlog(options: usage.Options) -> None:
    """The programs' --backlog: 1 or more (the kernel caps it at net.core.somaxconn)."""
    if not options["backlog"] >= 1:
        raise usage.UsageError(f"--backlog must be 1 or more, not {options['backlog']}")


class _AcceptGate:
    """
    Pauses the listening ports in front of C{guard} while it holds half of
    its pending-heads limit, until it holds a quarter (see the module's
    docstring); while paused, it looks every C{interval} seconds.
    """

    interval = 0.005

    def __init__(self, guard: HeaderGuardFactory, clock: IReactorTime) -> None:
        self._guard = guard
        self._clock = clock
        self._ports: list[Any] = []
        self._poll: LoopingCall | None = None
        #: Times the ports were paused (tests, and a reader of the numbers).
        self.pauses = 0

    def add(self, port: IListeningPort) -> None:
        if hasattr(port, "stopReading") and hasattr(port, "startReading"):
            self._ports.append(port)

    def remove(self, port: IListeningPort) -> None:
        if port in self._ports:
            self._ports.remove(port)
        if not self._ports:
            self._resume()

    def accepted(self) -> None:
        """A connection was accepted: pause if the guard is half full."""
        if self._poll is None and self._guard.pending * 2 >= self._guard.limits.max_pending and self._ports:
            self.pauses += 1
            for port in self._ports:
                port.stopReading()
            self._poll = LoopingCall(self._check)
            self._poll.clock = self._clock
            self._poll.start(self.interval, now=False)

    def _check(self) -> None:
        if self._guard.pending * 4 <= self._guard.limits.max_pending:
            self._resume()

    def _resume(self) -> None:
        poll, self._poll = self._poll, None
        if poll is None:
            return
        if poll.running:
            poll.stop()
        for port in self._ports:
            if not getattr(port, "disconnecting", False):
                port.startReading()


#: The gate of each guard (its listeners share it: --listen and --also-listen).
_gates: weakref.WeakKeyDictionary[HeaderGuardFactory, _AcceptGate] = weakref.WeakKeyDictionary()


def _guard_behind(factory: object) -> HeaderGuardFactory | None:
    """The request-head guard C{factory} is, or wraps (TLS, PROXY protocol), if any."""
    for _ in range(4):
        if isinstance(factory, HeaderGuardFactory):
            return factory
        factory = getattr(factory, "wrappedFactory", None)
    return None


@implementer(IProtocolFactory, ILoggingContext)
class _GatedFactory:
    """C{wrapped}, telling C{gate} of each connection it accepts; otherwise it (log prefix, ALPN)."""

    def __init__(self, wrapped: IProtocolFactory, gate: _AcceptGate) -> None:
        self._wrapped = wrapped
        self._gate = gate
        if IProtocolNegotiationFactory.providedBy(wrapped):
            alsoProvides(self, IProtocolNegotiationFactory)

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        protocol = self._wrapped.buildProtocol(addr)
        self._gate.accepted()
        return protocol

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def logPrefix(self) -> str:
        if ILoggingContext.providedBy(self._wrapped):
            return str(ILoggingContext(self._wrapped).logPrefix())
        return self._wrapped.__class__.__name__

    def acceptableProtocols(self) -> list[bytes]:
        return list(IProtocolNegotiationFactory(self._wrapped).acceptableProtocols())


@implementer(IStreamServerEndpoint)
class _Gated:
    """An endpoint whose listening ports pause while the guard behind them is half full."""

    def __init__(self, endpoint: IStreamServerEndpoint, gate: _AcceptGate) -> None:
        self._endpoint = endpoint
        self._gate = gate
        self.ports: list[IListeningPort] = []

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        def listening(port: IListeningPort) -> IListeningPort:
            self._gate.add(port)
            self.ports.append(port)
            return port

        return self._endpoint.listen(_GatedFactory(protocolFactory, self._gate)).addCallback(listening)


def check_listen(flag: str, description: str) -> None:
    """A usable server endpoint description, or a one-line usage error naming C{flag}."""
    from twisted.internet import reactor

    if description.startswith(_PROXY_PREFIX) and _unwrapped(description).startswith("ssl:"):
        raise usage.UsageError(f"--{flag} {description!r}: the PROXY header comes before TLS: "
                               "haproxy:tcp:... (with --tls-cert/--tls-key for the tunnel's listener)")
    try:
        endpoints.serverFromString(reactor, description)
    except Exception as e:  # a bad description, a missing key file...: one line, no traceback
        raise usage.UsageError(f"--{flag} {description!r}: {printable(str(e))}") from None
    port = port_of(description)
    if port is not None and not 0 <= port <= 65535:
        raise usage.UsageError(f"--{flag} {description!r}: port {port} is not 0-65535")


class Listening(StreamServerEndpointService):
    """
    A listening service whose failure to listen (a busy port) is one line,
    not a traceback; with C{own}, what it binds joins the server's own
    listeners.  It listens with C{backlog} unless the description names one.
    """

    def __init__(self, flag: str, description: str, factory: IProtocolFactory,
                 program: str = "remotedialer-server", own: OwnListeners | None = None,
                 backlog: int = DEFAULT_BACKLOG) -> None:
        from twisted.internet import reactor

        #: What it listens on, the backlog added (L{with_backlog}).
        self.description = with_backlog(description, backlog)
        endpoint = endpoints.serverFromString(reactor, self.description)
        if own is not None:
            endpoint = _Recorded(endpoint, own)
        guard = _guard_behind(factory)
        self._gated: _Gated | None = None
        if guard is not None:
            gate = _gates.get(guard)
            if gate is None:
                gate = _gates[guard] = _AcceptGate(guard, reactor)
            endpoint = self._gated = _Gated(endpoint, gate)
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        self._raiseSynchronously = True  # as strports.service: fail at start, not later
        self._flag = flag
        self._program = program

    def stopService(self) -> Any:
        if self._gated is not None:
            for port in self._gated.ports:
                self._gated._gate.remove(port)
            self._gated.ports.clear()
        return super().stopService()  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        except CannotListenError as e:
            raise SystemExit(f"{self._program}: --{self._flag}: cannot listen on "
                             f"{e.interface or '*'}:{e.port}: {printable(str(e.socketError))}") from None
