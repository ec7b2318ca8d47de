"""
Turning a Connect's C{proto}/C{address} into a Twisted endpoint, under a
connect-authorizer.  This is the far side of every dial: the client reaching
its local targets, or a server the client may dial.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from zope.interface import implementer

from remotedialer._addresses import split_host_port
from remotedialer._deferred import maybe_deferred
from remotedialer._interfaces import IDialPolicy

#: Go's dial timeout for the targets of Connect.
DIAL_TIMEOUT = 60

ConnectAuthorizer = Callable[[str, str], "bool | defer.Deferred[bool]"]


def allow_all(proto: str, address: str) -> bool:
    """The Go example client's authorizer: every target is allowed."""
    return True


def deny_all(proto: str, address: str) -> bool:
    """Nothing may be dialed (the server's default for client-initiated dials)."""
    return False


def allow_patterns(patterns: Iterable[str]) -> ConnectAuthorizer:
    """
    An authorizer allowing targets whose C{proto/address} matches one of the
    shell-style C{patterns}, e.g. C{tcp/127.0.0.1:*} or C{tcp/*.svc:443}.
    """
    patterns = list(patterns)

    def authorize(proto: str, address: str) -> bool:
        target = f"{proto}/{address}"
        return any(fnmatch.fnmatchcase(target, p) for p in patterns)

    return authorize


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

    def endpoint_for(self, proto: str, address: str) -> defer.Deferred[IStreamClientEndpoint | None]:
        d = maybe_deferred(self._authorizer, proto, address)

        def decided(allowed: bool) -> IStreamClientEndpoint | None:
            return self.endpoint(proto, address) if allowed else None

        return d.addCallback(decided)

    def endpoint(self, proto: str, address: str) -> IStreamClientEndpoint:
        """The endpoint for a target, authorized or not."""
        if proto in ("tcp", "tcp4", "tcp6"):
            host, port = split_host_port(address)
            # An IP literal needs no name resolution (HostnameEndpoint would
            # still go through the resolver's thread pool on every dial).
            if isIPAddress(host):
                return TCP4ClientEndpoint(self._reactor, host, port, timeout=self._timeout)
            if isIPv6Address(host):
                return TCP6ClientEndpoint(self._reactor, host, port, timeout=self._timeout)
            return HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        if proto == "unix":
            return UNIXClientEndpoint(self._reactor, address, timeout=self._timeout)
        raise ValueError(f"unsupported protocol {proto!r}")
