"""
A SOCKS5 proxy into the clients' networks (C{--socks-listen}): C{curl
--socks5-hostname 127.0.0.1:1080 --proxy-user foo:TOKEN https://10.0.0.5:6443/}
or a browser reaches targets behind client C{foo}.

The handshake is L{remotedialer.proxies._socks}'s machine; this protocol feeds it,
applies the proxies' access rules (L{ProxyAccess}: the password must be a
front-door token where those are configured, and one for the client named;
the client is the user name, or the target's C{<host>.<client>.tunnel}
suffix), then becomes a L{TunnelSplice}.  Its outcome is RFC 1928's reply:
succeeded; not allowed (credentials, a token not for that client, the
client's dial rules, this server's own listener);
network unreachable (the client is not connected); connection refused;
host unreachable; TTL expired (the dial timed out); general failure.  A
handshake is bounded in time and in bytes, and in how many may be in
progress at once (L{UpgradeLimits}), as the CONNECT proxy's head is.
"""

from __future__ import annotations

from remotedialer.proxies._handshake import HandshakeFactory, HandshakeSplice
from remotedialer.proxies._socks import (
    Authenticate,
    ConnectRequest,
    Event,
    Failed,
    Reply,
    Socks5Server,
    State,
)
from remotedialer.server._access import Refusal
from remotedialer.tunnel._logtext import address

__all__ = ["SocksProxyFactory", "reply_for"]

_NOT_ALLOWED = {"dial-refused", "own-listener", "caller-refused", "client-not-allowed", "unauthenticated",
                "no-client"}
_HOST_UNREACHABLE = ("unreachable", "no route", "resolve", "no such host", "dns", "name or service")


def reply_for(reason: str, text: str) -> Reply:
    """The RFC 1928 reply for a failure (a L{FAILURE_REASONS} word, and its text)."""
    if reason == "client-not-connected":
        return Reply.NETWORK_UNREACHABLE
    if reason in _NOT_ALLOWED:
        return Reply.NOT_ALLOWED
    if reason == "dial-timeout":
        return Reply.TTL_EXPIRED
    lower = text.lower()
    if "refused" in lower:
        return Reply.CONNECTION_REFUSED
    if "network is unreachable" in lower:
        return Reply.NETWORK_UNREACHABLE
    if any(word in lower for word in _HOST_UNREACHABLE):
        return Reply.HOST_UNREACHABLE
    return Reply.GENERAL_FAILURE


class _SocksProxy(HandshakeSplice):
    """One SOCKS5 connection: its handshake, then a splice (see module docstring)."""

    factory: SocksProxyFactory

    def __init__(self, factory: HandshakeFactory) -> None:
        super().__init__(factory)
        self._machine = Socks5Server(allow_no_auth=not factory.access.needs_password)
        self._user: str | None = None
        self._password: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._machine.state is State.OPEN or self.route is not None:
            # Relayed to the stream, even before our reply (optimistic data).
            super().dataReceived(data)
            return
        self._handle(self._machine.receive_data(data))

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Authenticate):
                self._handle(self._authenticate(event))
            elif isinstance(event, ConnectRequest):
                self._connect(event)
            elif isinstance(event, Failed):
                reason = "unauthenticated" if event.text == "authentication failed" else "bad-request"
                self._close(reason, event.text)
        self._flush()

    def _authenticate(self, event: Authenticate) -> list[Event]:
        """Credentials: the password must be a token where tokens are configured; the user, UTF-8."""
        try:
            self._user = event.user.decode("utf-8")
        except UnicodeDecodeError:
            return self._machine.accept_credentials(False)
        self._password = event.password
        refusal = self.factory.access.caller_refusal(self.transport.getPeer(), event.password)
        ok = refusal is None or refusal.reason != "unauthenticated"  # (a caller refused: at the request)
        return self._machine.accept_credentials(ok)

    def _connect(self, event: ConnectRequest) -> None:
        self._settled()
        route = self.factory.access.admit(self.transport.getPeer(), self._password, self._user,
                                          event.host, event.port)
        if isinstance(route, Refusal):
            self._machine.reply(reply_for(route.reason, route.text))
            self._close(route.reason, route.text)
            return
        self.splice(route, self._machine.trailing_data())

    def dial_succeeded(self) -> None:
        self._machine.reply(Reply.SUCCEEDED)
        self._flush()

    def dial_failed(self, reason: str, text: str) -> None:
        self._machine.reply(reply_for(reason, text))
        self._flush()
        self.transport.loseConnection()

    def _close(self, reason: str, text: str) -> None:
        """Refuse: count, log, send what the machine queued, close."""
        self._settled()
        self.forwarder.refused(reason, text, address(self.transport.getPeer()))
        self._flush()
        self.transport.loseConnection()

    def _flush(self) -> None:
        data = self._machine.data_to_send()
        if data:
            self.transport.write(data)

    def too_slow(self, within: str) -> None:
        self._close("handshake-timeout", f"no complete SOCKS5 handshake {within}")


class SocksProxyFactory(HandshakeFactory):
    """
    The SOCKS5 proxy's listening factory (see module docstring).

    @ivar pending: connections still in their handshake; past
        C{limits.max_pending} new ones are closed at once.
    """

    splice = _SocksProxy
    handshaking = "in their SOCKS5 handshake"
