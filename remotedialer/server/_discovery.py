"""
Peer discovery through DNS: the replicas of a server group found by
resolving one name, as a Kubernetes headless Service gives (one A or AAAA
record per ready pod), and peered with as they come and go.

Every C{interval} seconds L{PeerDiscovery} looks the name up (A and AAAA,
through twisted.names) and makes the server's peers match the answer:
a new address is added as a peer (L{Server.add_peer}), one no longer listed
is removed (its links both ways torn down).  Peers given otherwise
(C{--peers}, C{--peers-file}) are left alone.

Peer ids.  Go's peers name each other by the id each presents on its link
(C{X-API-Tunnel-ID}); the receiving side accepts the link only from an id
it knows, with that id's token.  Discovered peers are named by their
address as DNS lists it, C{IP:PORT} (C{[IPv6]:PORT}), so every server must
use its own C{IP:PORT} as its peer id (Kubernetes: C{--id $(POD_IP):8123}):
then what A calls B is what B presents to A, both sides agree, and the
record that is this server's own address is recognised and skipped.  All
discovered peers share one token, the server's own (C{--token-file}).

Failures.  A name that does not exist (NXDOMAIN) or has no records means no
replicas: the discovered peers go.  A lookup that fails otherwise (time-out,
server failure) changes nothing -- a DNS hiccup must not tear down links
that work -- and is logged once until lookups work again.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError
from twisted.python.failure import Failure

from remotedialer.protocol._text import printable
from remotedialer.tunnel._logtext import failure_text

if TYPE_CHECKING:
    from twisted.internet.interfaces import IResolver

    from remotedialer.server._server import Server

__all__ = ["DNS_INTERVAL", "DNS_URL_TEMPLATE", "PeerDiscovery", "peer_address"]

#: Seconds between lookups (a Kubernetes headless Service's records live 5-30 s).
DNS_INTERVAL = 10.0
#: The tunnel URL of a discovered peer; {address} is IP:PORT ([IPv6]:PORT),
#: {host} the IP ([IPv6]) and {port} the port.
DNS_URL_TEMPLATE = "ws://{address}/connect"


def peer_address(ip: str, port: int) -> str:
    """C{IP:PORT}, the IPv6 address in brackets: a discovered peer's id and URL address."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _addresses(answers: list[dns.RRHeader]) -> set[str]:
    found: set[str] = set()
    for record in answers:
        payload = record.payload
        if isinstance(payload, dns.Record_A):
            found.add(payload.dottedQuad())
        elif isinstance(payload, dns.Record_AAAA):
            found.add(str(ipaddress.IPv6Address(socket.inet_ntop(socket.AF_INET6, payload.address))))
    return found


class PeerDiscovery(Service):
    """
    Keeps C{server}'s peers in step with the addresses C{name} resolves to
    (see the module docstring); each is reached at C{port} with the URL
    C{url_template} gives, and presents C{token}.
    """

    log = Logger()

    def __init__(
        self,
        server: Server,
        name: str,
        port: int,
        token: str,
        *,
        resolver: IResolver,
        interval: float = DNS_INTERVAL,
        url_template: str = DNS_URL_TEMPLATE,
        clock: IReactorTime | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be over 0 s, not {interval}")
        self.server = server
        self.dns_name = name
        self.port = port
        self.token = token
        self.interval = interval
        self.url_template = url_template
        self.resolver = resolver
        self._clock = clock if clock is not None else server.reactor
        #: Ids of the peers we added (and may remove).
        self.peers: set[str] = set()
        self._loop: LoopingCall | None = None
        self._pending: defer.Deferred[None] | None = None
        self._failing: str | None = None
        self._warned_self = False

    def url_for(self, ip: str) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        return self.url_template.format(address=peer_address(ip, self.port), host=host, port=self.port)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self.log.info("peer discovery: resolving {name} every {interval:g} s, peers on port {port}",
                      name=self.dns_name, interval=self.interval, port=self.port)
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def check(self) -> defer.Deferred[None]:
        """Look the name up once and apply the answer (a lookup still running is not doubled)."""
        if self._pending is not None:
            return defer.succeed(None)
        lookups = [self._lookup(self.resolver.lookupAddress), self._lookup(self.resolver.lookupIPV6Address)]
        d = defer.gatherResults(lookups, consumeErrors=True)
        pending: defer.Deferred[None] = d.addCallbacks(self._resolved, self._failed)
        pending.addErrback(self._not_applied)  # so that the LoopingCall goes on

        def settled(result: object) -> object:
            if self._pending is pending:
                self._pending = None
            return result

        pending.addBoth(settled)
        if not pending.called:
            self._pending = pending
        return pending

    def _lookup(self, lookup: object) -> defer.Deferred[set[str]]:
        d: defer.Deferred[tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]]
        d = lookup(self.dns_name)  # type: ignore[operator]  # IResolver's lookups are untyped
        result: defer.Deferred[set[str]] = d.addCallback(lambda answer: _addresses(answer[0]))

        def no_such_name(failure: Failure) -> set[str]:
            failure.trap(DNSNameError, AuthoritativeDomainError)
            return set()

        return result.addErrback(no_such_name)

    def _not_applied(self, failure: Failure) -> None:
        self.log.failure("peer discovery: applying the answer for {name} failed; trying again at the "
                         "next check", failure, name=self.dns_name)

    def _failed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return
        first = failure.value
        cause = first.subFailure if isinstance(first, defer.FirstError) else failure
        reason = failure_text(cause) or "lookup failed"
        if self._failing != reason:
            self.log.warn("peer discovery: looking up {name} failed ({reason}); keeping the {count} peers "
                          "found before", name=self.dns_name, reason=printable(reason), count=len(self.peers))
        self._failing = reason

    def _resolved(self, results: list[set[str]]) -> None:
        if self._failing is not None:
            self.log.info("peer discovery: looking up {name} works again", name=self.dns_name)
            self._failing = None
        wanted = {peer_address(ip, self.port): ip for ip in set().union(*results)}
        own = self.server.peer_id
        if wanted and own not in wanted and not self._warned_self:
            self._warned_self = True
            self.log.warn("peer discovery: {name} does not list this server's peer id {id}: peers know a "
                          "discovered server by its IP:PORT, so --id should be this server's",
                          name=self.dns_name, id=own)
        wanted.pop(own or "", None)
        for peer_id in sorted(self.peers - wanted.keys()):
            self.log.info("peer discovery: {peer} gone from {name}", peer=peer_id, name=self.dns_name)
            self.server.remove_peer(peer_id)
        for peer_id in sorted(wanted.keys() - self.peers):
            self.log.info("peer discovery: {peer} found in {name}", peer=peer_id, name=self.dns_name)
            self.server.add_peer(peer_id, self.token, self.url_for(wanted[peer_id]))
        self.peers = set(wanted)
