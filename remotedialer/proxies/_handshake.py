"""
What the two proxies (CONNECT and SOCKS5) share before they splice: a
handshake bounded as a request head is (L{UpgradeLimits}: time to finish
it, connections still in one), and a listening factory that refuses new
connections past that count.  Each proxy supplies its handshake and how
it says "too slow" in its own protocol.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.server._access import ProxyAccess
from remotedialer.server._splice import Forwarder, TunnelSplice
from remotedialer.tunnel._logtext import address

__all__ = ["HandshakeFactory", "HandshakeSplice"]


class HandshakeSplice(TunnelSplice):
    """A splice that first runs a handshake, counted and timed by its factory."""

    def __init__(self, factory: HandshakeFactory) -> None:
        super().__init__(factory.forwarder)
        self.factory = factory
        #: Still in the handshake (counted in C{factory.pending}).
        self._pending = False
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._pending = True
        self.factory.pending += 1
        self._deadline = self.forwarder.clock.callLater(self.factory.limits.timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        self.too_slow(f"within {self.factory.limits.timeout:g} s")

    def too_slow(self, within: str) -> None:
        """The handshake did not finish C{within} the time allowed: answer and close."""
        raise NotImplementedError

    def _settled(self) -> None:
        """The handshake is over (answered, or spliced): it no longer counts."""
        if self._pending:
            self._pending = False
            self.factory.pending -= 1
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._settled()
        super().connectionLost(reason)


class HandshakeFactory(Factory):
    """
    A proxy's listening factory.

    @ivar pending: connections still in their handshake; past
        C{limits.max_pending} new ones are closed at once.
    """

    noisy = False  # the listening port says where it listens, with our logPrefix
    #: The protocol of one connection.
    splice: ClassVar[type[HandshakeSplice]]
    #: What a connection still in its handshake is doing (for the refusal's text).
    handshaking: ClassVar[str]

    def __init__(self, forwarder: Forwarder, access: ProxyAccess | None = None,
                 limits: UpgradeLimits | None = None) -> None:
        self.forwarder = forwarder
        self.access = access if access is not None else ProxyAccess()
        self.limits = limits if limits is not None else UpgradeLimits()
        self.pending = 0

    def logPrefix(self) -> str:
        return self.forwarder.stats.name

    def buildProtocol(self, addr: IAddress | None) -> HandshakeSplice | None:
        self.forwarder.stats.accepted()
        if self.pending >= self.limits.max_pending:
            self.forwarder.refused("too-many-handshakes",
                                   f"{self.pending} connections are still {self.handshaking} "
                                   "(the limit): closed", address(addr))
            return None
        return self.splice(self)
