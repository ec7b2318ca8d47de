"""
Port forwards (C{--forward LISTEN=CLIENT:proto/host:port}): every
connection accepted on a listener goes, as it is, to one fixed target
behind one client, through that client's tunnel (or a peer that has it),
as C{ssh -L} does.

While the client is not connected, a connection is closed at once (its
TCP client sees the connection end before any byte), and that is logged,
throttled: holding it open would only make its tool hang.  So is one
whose target is one of this server's own listeners (C{own}): the program
refuses such a forward at start, but a C{tcp:0} listener learns its port
only as it binds.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory

from remotedialer.protocol._addresses import TCP_PROTOS
from remotedialer.server._access import Route
from remotedialer.server._own import OwnListeners
from remotedialer.server._splice import Forwarder, TunnelSplice

__all__ = ["PortForwardFactory"]


class _PortForward(TunnelSplice):
    """One forwarded connection: nothing to answer, the stream is opened at once."""

    def __init__(self, forwarder: Forwarder, route: Route) -> None:
        super().__init__(forwarder)
        self._route = route

    def connectionMade(self) -> None:
        self.splice(self._route)


class PortForwardFactory(Factory):
    """
    Accepts connections for one port forward to C{route} (see module
    docstring); counts them in C{forwarder.stats}.  A route to one of
    C{own} (this server's own listeners) is refused.
    """

    noisy = False  # the listening port says where it listens, with our logPrefix

    def __init__(self, forwarder: Forwarder, route: Route, own: OwnListeners | None = None) -> None:
        self.forwarder = forwarder
        self.route = route
        self.own = own

    def logPrefix(self) -> str:
        return self.forwarder.stats.name

    def buildProtocol(self, addr: IAddress | None) -> _PortForward | None:
        forwarder = self.forwarder
        forwarder.stats.accepted()
        route = self.route
        if self.own is not None and route.proto in TCP_PROTOS and self.own.holds_address(route.address):
            forwarder.refused("own-listener", "the target is this server's own listener: connection closed",
                              str(route))
            return None
        reaches = forwarder.reaches
        if reaches is not None and not reaches(self.route.client_key):
            forwarder.refused("client-not-connected",
                              f"client {self.route.client_key} is not connected: connection closed",
                              str(self.route))
            return None
        return _PortForward(forwarder, self.route)
