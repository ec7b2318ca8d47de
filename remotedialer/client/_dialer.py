"""
Turning a Connect's C{proto}/C{address} into a Twisted endpoint, under a
connect-authorizer.  This is the far side of every dial: the client reaching
its local targets, or a server the client may dial.

Under a L{DialACL} (what L{allow_patterns} builds) the dial is checked and
made by L{ACLDialer}: a host name is resolved once, every address it
resolves to is checked, and the endpoint dials exactly the checked address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from remotedialer.client._acl import (
    TCP_PROTOS,
    DialACL,
    DialRule,
    IPAddress,
    canonical_address,
    canonical_host,
)
from remotedialer.protocol._addresses import split_host_port
from remotedialer.protocol._exceptions import DialRefused
from remotedialer.tunnel._deferred import maybe_deferred
from remotedialer.tunnel._interfaces import IDialPolicy

#: Go's dial timeout for the targets of Connect.
DIAL_TIMEOUT = 60

ConnectAuthorizer = Callable[[str, str], "bool | defer.Deferred[bool]"]


def allow_all(proto: str, address: str) -> bool:
    """The Go example client's authorizer: every target is allowed."""
    return True


def deny_all(proto: str, address: str) -> bool:
    """Nothing may be dialed (the server's default for client-initiated dials)."""
    return False


def allow_patterns(patterns: Iterable[str]) -> DialACL:
    """
    An authorizer allowing the targets C{patterns} allow: dial rules such
    as C{tcp/127.0.0.1:*}, C{tcp/10.0.0.0/8:443} or C{tcp/*.svc:443} (see
    L{remotedialer.client._acl}; these are no longer shell globs, and a bad pattern
    raises ValueError).  L{LocalDialer} given the result resolves host
    names once and checks every address (L{ACLDialer}).
    """
    return DialACL(patterns)


def _tcp_endpoint(
    reactor: IReactorTime, ip: IPAddress, port: int, timeout: float
) -> IStreamClientEndpoint:
    if ip.version == 4:
        return TCP4ClientEndpoint(reactor, str(ip), port, timeout=timeout)
    return TCP6ClientEndpoint(reactor, str(ip), port, timeout=timeout)


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses of one host name resolution."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.done: defer.Deferred[list[str]] = defer.Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, IPv4Address | IPv6Address):
            self.hosts.append(address.host)

    def resolutionComplete(self) -> None:
        if not self.done.called:  # (not after a timeout)
            self.done.callback(self.hosts)


@implementer(IDialPolicy)
class ACLDialer:
    """
    Dials what C{acl} (a L{DialACL}) allows, and nothing else:

      - an IP address target, in any spelling, is checked and dialed in its
        canonical form (C{0177.0.0.1} is checked and dialed as 127.0.0.1);
      - a host name target is resolved once with the reactor's
        C{nameResolver} (only IPv4 for C{tcp4}, only IPv6 for C{tcp6}); if
        any address is not allowed, the dial is refused; else the first
        address is dialed as itself (TCP4/TCP6ClientEndpoint: nothing
        resolves it again);
      - a C{unix} target needs a rule naming its exact path.

    A host name that no host name rule names, while no address rule covers
    its proto and port, is refused without being resolved.  A refusal is a
    L{DialRefused} (its one-line text goes back as the stream's Error).
    """

    def __init__(self, reactor: IReactorTime, acl: DialACL, timeout: float = DIAL_TIMEOUT) -> None:
        self._reactor = reactor
        self._acl = acl
        self._timeout = timeout

    def endpoint_for(self, proto: str, address: str) -> defer.Deferred[IStreamClientEndpoint | None]:
        try:
            return self._decide(proto, address)
        except ValueError as e:
            return defer.fail(DialRefused(proto, address, str(e)))

    def _decide(self, proto: str, address: str) -> defer.Deferred[IStreamClientEndpoint | None]:
        if proto == "unix":
            if not self._acl.match(proto, address, 0):
                raise ValueError("no rule allows this socket path")
            return defer.succeed(UNIXClientEndpoint(self._reactor, address, timeout=self._timeout))
        if proto not in TCP_PROTOS:
            raise ValueError(f"unsupported protocol {proto!r}")
        host, port = split_host_port(address)
        target = canonical_host(host)
        if isinstance(target, str):
            return self._resolve(proto, address, host, target, port)
        if target.version == 6 and target.scope_id:
            raise ValueError("IPv6 zones are not supported")
        why = self._acl.address_refusal(proto, target, port)
        if why is not None:
            raise ValueError(why)
        return defer.succeed(_tcp_endpoint(self._reactor, target, port, self._timeout))

    def _resolve(
        self, proto: str, address: str, host: str, name: str, port: int
    ) -> defer.Deferred[IStreamClientEndpoint | None]:
        rules = self._acl.name_rules(proto, name, port)
        if not rules and not self._acl.may_allow_addresses(proto, port):
            raise ValueError(f"no rule allows {name} on port {port}")
        if not IReactorPluggableNameResolver.providedBy(self._reactor):
            raise ValueError("this reactor cannot resolve host names")
        resolver = IReactorPluggableNameResolver(self._reactor).nameResolver
        types: list[type[IAddress]] | None = None
        if proto != "tcp":
            types = [IPv4Address] if proto == "tcp4" else [IPv6Address]
        collector = _Addresses()
        d = collector.done

        def timed_out(result: object, timeout: float) -> None:
            raise DialRefused(proto, address, f"resolving {name} took over {timeout:g} s")

        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timed_out)
        try:
            resolver.resolveHostName(collector, host, port, types, "TCP")
        except Exception as e:
            d.addErrback(lambda _: None)  # (the timeout's cancellation)
            d.cancel()
            raise ValueError(f"resolving {name} failed: {e}") from None

        def checked(hosts: list[str]) -> IStreamClientEndpoint | None:
            try:
                return self._checked(proto, name, port, rules, hosts)
            except ValueError as e:
                raise DialRefused(proto, address, str(e)) from None

        return d.addCallback(checked)

    def _checked(
        self, proto: str, name: str, port: int, rules: list[DialRule], hosts: list[str]
    ) -> IStreamClientEndpoint:
        if not hosts:
            raise ValueError(f"{name} does not resolve")
        families = {"tcp4": (4,), "tcp6": (6,)}.get(proto, (4, 6))
        chosen: IPAddress | None = None
        for resolved in hosts:
            ip = canonical_address(resolved)
            if ip is None:
                raise ValueError(f"{name} resolves to {resolved!r}, not an IP address")
            if ip.version not in families:
                continue  # (a resolver ignoring addressTypes: never dialed)
            why = self._acl.address_refusal(proto, ip, port, name, rules)
            if why is not None:
                raise ValueError(why)
            if chosen is None:
                chosen = ip
        if chosen is None:
            raise ValueError(f"{name} has no IPv{families[0]} address")
        return _tcp_endpoint(self._reactor, chosen, port, self._timeout)


@implementer(IDialPolicy)
class LocalDialer:
    """
    Dials C{tcp}, C{tcp4}, C{tcp6} and C{unix} targets from this host, when
    C{authorizer(proto, address)} allows it (it may return a Deferred).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        authorizer: ConnectAuthorizer,
        timeout: float = DIAL_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._authorizer = authorizer
        self._timeout = timeout
        #: Under a DialACL, its own checks and dials (see ACLDialer).
        self._acl_dialer = (ACLDialer(reactor, authorizer, timeout)
                            if isinstance(authorizer, DialACL) else None)

    def endpoint_for(self, proto: str, address: str) -> defer.Deferred[IStreamClientEndpoint | None]:
        if self._acl_dialer is not None:
            return self._acl_dialer.endpoint_for(proto, address)
        d = maybe_deferred(self._authorizer, proto, address)

        def decided(allowed: bool) -> IStreamClientEndpoint | None:
            return self.endpoint(proto, address) if allowed else None

        return d.addCallback(decided)

    def endpoint(self, proto: str, address: str) -> IStreamClientEndpoint:
        """The endpoint for a target, authorized or not."""
        if proto in ("tcp", "tcp4", "tcp6"):
            host, port = split_host_port(address)
            # An IP literal, in any spelling (0177.0.0.1, ::ffff:10.0.0.1),
            # is dialed in its canonical form, with no name resolution
            # (HostnameEndpoint would go through the resolver's thread pool).
            ip = canonical_address(host)
            if ip is not None:
                return _tcp_endpoint(self._reactor, ip, port, self._timeout)
            return HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        if proto == "unix":
            return UNIXClientEndpoint(self._reactor, address, timeout=self._timeout)
        raise ValueError(f"unsupported protocol {proto!r}")
