"""
The library's exceptions built on Twisted's error types: a stream that
ends badly is a C{ConnectionLost}, a dial nobody can make a
C{ConnectError}, so code written for TCP handles them unchanged.  The
rest live in L{remotedialer.protocol._exceptions}.
"""

from __future__ import annotations

from twisted.internet.error import ConnectError, ConnectionLost

__all__ = ["ClientNotConnected", "ProxyError", "ServerDraining", "StreamError", "TunnelLinkError"]


class StreamError(ConnectionLost):
    """
    The far side closed the stream with an error (its text is the message),
    or the stream failed locally for the reason given.
    """

    def __str__(self) -> str:
        # Just the reason: it is forwarded as Error text (peers relaying
        # streams), and Go reads only 100 bytes of that.
        return " ".join(str(arg) for arg in self.args)


class ClientNotConnected(ConnectError):
    """No session (local or through a peer) reaches that client."""

    def __init__(self, message: str) -> None:
        super().__init__(string=message)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProxyError(ConnectError):
    """
    The HTTP proxy a tunnel is dialed through did not open the way to the
    server: it could not be reached, refused the CONNECT (its status is in
    the message), or did not answer.  The message is one printable line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(string=message)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self.message = message

    def __str__(self) -> str:
        return self.message


class ServerDraining(ConnectError):
    """The server is shutting down: it opens no new streams."""


class TunnelLinkError(ConnectionLost):
    """The WebSocket carrying a tunnel session ended."""
