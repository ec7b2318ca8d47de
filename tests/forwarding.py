"""
Fixtures for the forwarders' unit tests: a proxy or port-forward factory
over a L{MemoryTunnel}, a caller on an in-memory TCP connection to it.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher

from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.server._splice import Forwarder
from remotedialer.testing import MemoryTunnel, connect_in_memory
from tests.support import Collector, Echo

TARGET = "10.0.0.5:6443"
LISTENER = IPv4Address("TCP", "127.0.0.1", 8124)


class Greeter(Protocol):
    """A target that speaks first (as SSH or SMTP servers do), then echoes."""

    def connectionMade(self) -> None:
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def tunnel_with_targets(client_key: str = "foo") -> MemoryTunnel:
    """A tunnel whose client reaches an echo at TARGET and a greeter at 10.0.0.6:22."""
    tunnel = MemoryTunnel(client_key=client_key)
    tunnel.add_target("tcp", TARGET, Factory.forProtocol(Echo))
    tunnel.add_target("tcp", "10.0.0.6:22", Factory.forProtocol(Greeter))
    return tunnel


def forwarder(tunnel: MemoryTunnel, kind: str = "connect-proxy", dial_wait: float = 0.25,
              reaches=None) -> Forwarder:
    return Forwarder(tunnel, ForwarderStats(f"{kind}:test", kind), tunnel.clock, dial_wait=dial_wait,
                     reaches=reaches)


def token_access(token: bytes):
    """The proxies' access with front-door tokens: just C{token}."""
    from remotedialer.server._access import FrontDoorAccess, ProxyAccess
    from remotedialer.server._auth import hash_token

    return ProxyAccess(FrontDoorAccess(token_hashes=frozenset([bytes.fromhex(hash_token(token))])))


def scoped_access(scopes: dict[bytes, tuple[str, ...]]):
    """The proxies' access with front-door tokens, each for the clients given (a tokens file's clients=)."""
    from remotedialer.server._access import FrontDoorAccess, ProxyAccess
    from remotedialer.server._auth import ClientScope, hash_token

    return ProxyAccess(FrontDoorAccess(token_hashes={
        bytes.fromhex(hash_token(token)): ClientScope(clients) for token, clients in scopes.items()}))


def connect_caller(tunnel: MemoryTunnel, factory, host: str = "127.0.0.1"):
    """A caller connected to a protocol of C{factory}: (that protocol, the caller's Collector)."""
    caller_address = IPv4Address("TCP", host, 50000)
    proxy = factory.buildProtocol(caller_address)
    caller = Collector()
    if proxy is None:
        return None, caller
    connect_in_memory(tunnel.clock, proxy, caller, LISTENER, caller_address)
    return proxy, caller


def received(caller: Collector) -> bytes:
    return b"".join(caller.chunks)


class LogLines:
    """The formatted log lines emitted while it is installed (remove with C{stop})."""

    def __init__(self, testcase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event) -> None:
        self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]
