"""
Prometheus metrics of a server or a client, each on a registry of its own
(never the global one: tests, and several servers in one process, would
collide there).

Two kinds, so that nothing is counted per byte:

  - Counters of events, bumped once per session, stream or dial by
    L{TrafficCounters}, the L{ITrafficObserver} of the sessions.  Go's
    counters (docs/protocol.md, PROTOCOL.md section 7) keep Go's names,
    labels and help, so Rancher's dashboards keep working.  Their bytes are
    not counted as they pass: each session's multiplexer already counts the
    bytes of every message, so a byte counter is the ended sessions' totals
    plus the live sessions' counts, added up at scrape time.
  - Gauges of live state (sessions, streams, paused streams, buffered
    bytes, pending dials, peers), read from the server's (or client's)
    sessions at scrape time by a collector: no bookkeeping at all.

Go's byte counters count Data messages (transmit, with their headers) and
payload read (receive); ours count every message each way (Errors apart:
they are transmit_error_bytes), which differs from Go's by the few control
messages -- the same rates on a dashboard.

Label cardinality is bounded.  Go's C{addr} label (one series per target
address) is opt-in (L{MetricsOptions.addr_label}; else empty).  Go's
C{clientkey} label costs about seven series per client key, which is fine
for hundreds of clients and heavy for thousands: L{MetricsOptions} can drop
it (empty), and however many keys or addresses come, at most
C{max_label_values} distinct values of each are kept (later ones count under
C{_other_}).  C{proto} is one of the protocols Connect knows (else
C{other}), without a forwarding peer's C{<clientKey>::} prefix.

prometheus_client names a counter's samples C{<name>_total} (OpenMetrics
naming); Go's counters have no suffix, so they are collected as "unknown"
families (samples named as the family) and L{render} declares them
counters, as Go's exposition does.

Metrics are rendered on the reactor thread (the collectors read live
state), never in a thread pool as prometheus_client's Twisted resource would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
    TimeoutError,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.protocol._exceptions import TooManyDials
from remotedialer.protocol._text import printable
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.tunnel._interfaces import ISession, ITrafficObserver, ITunnelStream
from remotedialer.tunnel._session import Session

if TYPE_CHECKING:
    from remotedialer.client._client import TunnelClient
    from remotedialer.server._server import Server

__all__ = [
    "GO_COUNTERS",
    "ClientMetrics",
    "ForwarderCollector",
    "MetricsOptions",
    "ServerMetrics",
    "TrafficCounters",
    "render",
]

#: Go's metrics subsystem (no namespace): session_server_<name>.
GO_SUBSYSTEM = "session_server"
#: Our own metrics' namespace.
NAMESPACE = "remotedialer"
#: A label value standing for every value past the cap.
OVERFLOW = "_other_"
#: The protocols a Connect names (anything else is labelled "other").
_PROTOS = frozenset({"tcp", "tcp4", "tcp6", "unix", "udp", "udp4", "udp6"})
#: Dial latency buckets, seconds: loopback dials to Go's 60 s dial timeout.
DIAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _go(name: str) -> str:
    return f"{GO_SUBSYSTEM}_{name}"


#: Go's counters: full name -> (help, label names), as Go's metrics/session_manager.go has them.
GO_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    _go("total_add_websocket_session"): ("Total count of added websocket sessions", ("clientkey", "peer")),
    _go("total_remove_websocket_session"): ("Total count of removed websocket sessions",
                                            ("clientkey", "peer")),
    _go("total_add_connections"): ("Total count of added connections", ("clientkey", "proto", "addr")),
    _go("total_remove_connections"): ("Total count of removed connections", ("clientkey", "proto", "addr")),
    _go("total_transmit_bytes"): ("Total bytes transmitted", ("clientkey",)),
    _go("total_transmit_error_bytes"): ("Total error bytes transmitted", ("clientkey",)),
    _go("total_receive_bytes"): ("Total bytes received", ("clientkey",)),
    _go("total_peer_ws_attempt"): (
        "Total count of attempts to establish websocket session to other rancher-server", ("peer",)),
    _go("total_peer_ws_connected"): (
        "Total count of connected websocket sessions to other rancher-server", ("peer",)),
    _go("total_peer_ws_disconnected"): (
        "Total count of disconnected websocket sessions from other rancher-server", ("peer",)),
}


@attrs.frozen
class MetricsOptions:
    """
    Which labels the metrics carry (see the module docstring for the cost).

    @ivar addr_label: label Go's connection counters with the target
        address (one series per target: off by default).
    @ivar clientkey_label: label Go's counters with the client key (about
        seven series per client); False leaves it empty.
    @ivar max_label_values: the most distinct values kept for one label.
    """

    addr_label: bool = False
    clientkey_label: bool = True
    max_label_values: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))


class _Capped:
    """Label values as they come, up to C{limit} distinct ones; then L{OVERFLOW}."""

    def __init__(self, limit: int) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OVERFLOW
        self._seen.add(value)
        return value


def dial_failure_reason(failure: Failure) -> str:
    """A dial failure as one of a few label values (never its text: that is unbounded)."""
    if failure.check(PermissionError):
        return "not_allowed"
    if failure.check(TooManyDials):
        return "too_many_dials"
    if failure.check(ConnectionRefusedError):
        return "connection_refused"
    if failure.check(TimeoutError, TCPTimedOutError):
        return "timeout"
    if failure.check(DNSLookupError):
        return "dns"
    if failure.check(NoRouteError):
        return "unreachable"
    if failure.check(ConnectError, OSError):
        return "connect_error"
    if failure.check(ValueError):
        return "bad_target"
    return "other"


@implementer(ITrafficObserver)
class TrafficCounters:
    """
    The counters of one server's or client's sessions (an L{ITrafficObserver}:
    set it as their L{SessionFactory}'s observer), and the live sessions
    the gauges and byte counters read.
    """

    def __init__(self, registry: CollectorRegistry, options: MetricsOptions | None = None) -> None:
        self.options = options if options is not None else MetricsOptions()
        #: Sessions started and not yet ended.
        self.live: set[ISession] = set()
        self._keys = _Capped(self.options.max_label_values)
        self._addrs = _Capped(self.options.max_label_values)
        self.sessions_added: dict[tuple[str, str], int] = {}
        self.sessions_removed: dict[tuple[str, str], int] = {}
        self.connections_added: dict[tuple[str, str, str], int] = {}
        self.connections_removed: dict[tuple[str, str, str], int] = {}
        # Bytes of the sessions that ended, by client key label.
        self._ended_sent: dict[str, int] = {}
        self._ended_errors: dict[str, int] = {}
        self._ended_received: dict[str, int] = {}
        dials = Histogram(
            "dial_duration_seconds", "Seconds from a Connect to its target connected (or the dial failed)",
            ["outcome"], namespace=NAMESPACE, buckets=DIAL_BUCKETS, registry=registry)
        # Both series from the start (a dashboard's rate() needs them), bound once.
        self._connected, self._failed = dials.labels("connected"), dials.labels("failed")
        self._dial_failures = Counter(
            "dial_failures", "Dials for the far side's Connects that failed, by reason",
            ["reason"], namespace=NAMESPACE, registry=registry)
        self._open_failures = Counter(
            "stream_open_failures", "Streams we were asked to open through a tunnel and could not, by reason",
            ["reason"], namespace=NAMESPACE, registry=registry)

    def key_label(self, client_key: str) -> str:
        return self._keys(client_key) if self.options.clientkey_label else ""

    def _connection(self, session: ISession, stream: ITunnelStream) -> tuple[str, str, str]:
        proto, _, address = stream.target.partition("/")
        proto = proto.rpartition("::")[2]
        addr = self._addrs(printable(address)) if self.options.addr_label else ""
        return self.key_label(session.client_key), proto if proto in _PROTOS else "other", addr

    # ITrafficObserver

    def session_started(self, session: ISession) -> None:
        self.live.add(session)
        if not session.dials_as_client:  # Go counts the sessions it accepts
            key = (self.key_label(session.client_key), "true" if session.is_peer else "false")
            self.sessions_added[key] = self.sessions_added.get(key, 0) + 1

    def session_ended(self, session: ISession) -> None:
        self.live.discard(session)
        key = self.key_label(session.client_key)
        errors = session.error_bytes_sent
        self._ended_sent[key] = self._ended_sent.get(key, 0) + session.bytes_sent - errors
        self._ended_errors[key] = self._ended_errors.get(key, 0) + errors
        self._ended_received[key] = self._ended_received.get(key, 0) + session.bytes_received
        if not session.dials_as_client:
            labels = (key, "true" if session.is_peer else "false")
            self.sessions_removed[labels] = self.sessions_removed.get(labels, 0) + 1

    def stream_opened(self, session: ISession, stream: ITunnelStream) -> None:
        key = self._connection(session, stream)
        self.connections_added[key] = self.connections_added.get(key, 0) + 1

    def stream_closed(self, session: ISession, stream: ITunnelStream) -> None:
        key = self._connection(session, stream)
        self.connections_removed[key] = self.connections_removed.get(key, 0) + 1

    def stream_refused(self, session: ISession | None, reason: str) -> None:
        self._open_failures.labels(reason).inc()

    def dial_finished(self, session: ISession, seconds: float, failure: Failure | None) -> None:
        if failure is None:
            self._connected.observe(seconds)
        else:
            self._failed.observe(seconds)
            self._dial_failures.labels(dial_failure_reason(failure)).inc()

    # Read at scrape time.

    def byte_totals(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Bytes sent (Errors apart), Error bytes sent and bytes received, by client key label."""
        sent, errors, received = dict(self._ended_sent), dict(self._ended_errors), dict(self._ended_received)
        for session in self.live:
            key = self.key_label(session.client_key)
            error_bytes = session.error_bytes_sent
            sent[key] = sent.get(key, 0) + session.bytes_sent - error_bytes
            errors[key] = errors.get(key, 0) + error_bytes
            received[key] = received.get(key, 0) + session.bytes_received
        return sent, errors, received


def _go_counter(name: str, values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    """
    One of Go's counter families, its samples named as the family (no
    _total): an "unknown" family, the only kind whose samples are, which
    L{render} declares a counter.
    """
    documentation, labels = GO_COUNTERS[name]
    metric = UnknownMetricFamily(name, documentation, labels=labels)
    for label_values, value in values:
        metric.add_metric(list(label_values), value)
    return metric


def _gauge(name: str, documentation: str, value: float | None = None,
           labels: dict[str, float] | None = None, label: str = "") -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value,
                              labels=[label] if labels is not None else None)
    for label_value, v in (labels or {}).items():
        gauge.add_metric([label_value], v)
    return gauge


def _flow_gauges(sessions: Iterable[Session], kind: Callable[[Session], str],
                 kinds: tuple[str, ...]) -> Iterator[Metric]:
    """The gauges every program has: sessions, streams, paused streams, buffered bytes, pending dials."""
    by_kind = dict.fromkeys(kinds, 0.0)
    streams = dict.fromkeys(kinds, 0.0)
    paused_local = paused_remote = inbound = outbound = pending = 0
    for session in sessions:
        if session.closed:
            continue
        k = kind(session)
        by_kind[k] += 1
        flow = session.flow_summary()
        streams[k] += flow.streams
        inbound += flow.buffered_bytes
        pending += session.pending_dials
        paused_local += flow.paused_here
        paused_remote += flow.paused_by_far_side
        outbound += flow.held_bytes
    yield _gauge("sessions", "Tunnel sessions open, by kind", labels=by_kind, label="kind")
    yield _gauge("streams", "Streams open (draining ones included), by session kind",
                 labels=streams, label="kind")
    yield _gauge("paused_streams",
                 "Streams paused: by=local, we sent Pause (our reader is slow); "
                 "by=remote, the far side paused our writes",
                 labels={"local": paused_local, "remote": paused_remote}, label="by")
    yield _gauge("buffered_bytes",
                 "Bytes held: inbound for paused readers here, "
                 "outbound writes held while the far side paused us",
                 labels={"inbound": inbound, "outbound": outbound}, label="direction")
    yield _gauge("pending_dials", "Dials for the far side's Connects not connected yet", pending)


def _byte_counters(counters: TrafficCounters) -> Iterator[Metric]:
    sent, errors, received = counters.byte_totals()
    yield _go_counter(_go("total_transmit_bytes"), (((k,), v) for k, v in sent.items()))
    yield _go_counter(_go("total_transmit_error_bytes"), (((k,), v) for k, v in errors.items()))
    yield _go_counter(_go("total_receive_bytes"), (((k,), v) for k, v in received.items()))
    yield _go_counter(_go("total_add_connections"), counters.connections_added.items())
    yield _go_counter(_go("total_remove_connections"), counters.connections_removed.items())


class _ServerCollector(Collector):
    """A server's Go counters (bytes and peers read now) and gauges."""

    def __init__(self, server: Server, counters: TrafficCounters) -> None:
        self._server = server
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        server, counters = self._server, self._counters
        yield _go_counter(_go("total_add_websocket_session"), counters.sessions_added.items())
        yield _go_counter(_go("total_remove_websocket_session"), counters.sessions_removed.items())
        yield from _byte_counters(counters)
        links = [(peer_id, link) for peer_id in sorted(server.peers)
                 if (link := server.peer_link(peer_id)) is not None]
        yield _go_counter(_go("total_peer_ws_attempt"), (((p,), link.attempts) for p, link in links))
        yield _go_counter(_go("total_peer_ws_connected"), (((p,), link.opened) for p, link in links))
        yield _go_counter(_go("total_peer_ws_disconnected"), (((p,), link.closed) for p, link in links))

        def kind(session: Session) -> str:
            if session.dials_as_client:
                return "peer_link"
            return "peer" if session.is_peer else "client"

        # The server's own sessions, not the counters' (gauges need no observer).
        sessions = [*server.sessions.local_sessions(), *server.sessions.peer_sessions(),
                    *(link.session for _, link in links if link.session is not None)]
        yield from _flow_gauges(sessions, kind, ("client", "peer", "peer_link"))
        yield _gauge("clients", "Client keys with a session on this server", len(server.clients()))
        reachable = set(server.sessions.reachable_clients()) - set(server.clients())
        yield _gauge("peer_clients", "Client keys reachable only through a peer", len(reachable))
        yield _gauge("peers", "Peers configured", len(links))
        yield _gauge("peers_connected", "Peers our link to is open",
                     sum(1 for _, link in links if link.session is not None))


class _ClientCollector(Collector):
    """A client's counters (bytes, its tunnel's attempts) and gauges."""

    def __init__(self, client: TunnelClient, counters: TrafficCounters) -> None:
        self._client = client
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        client, counters = self._client, self._counters
        yield from _byte_counters(counters)
        sessions = [client.session] if client.session is not None else []
        yield from _flow_gauges(sessions, lambda session: "tunnel", ("tunnel",))
        yield _gauge("tunnel_connected", "1 while the tunnel is open and ready for the server's dials",
                     1.0 if client.ready else 0.0)
        yield CounterMetricFamily(f"{NAMESPACE}_tunnel_attempts", "Connection attempts to a server",
                                  value=client.attempts)
        yield CounterMetricFamily(f"{NAMESPACE}_tunnel_opened", "Tunnels opened", value=client.opened)
        yield CounterMetricFamily(f"{NAMESPACE}_tunnel_closed", "Tunnels closed", value=client.closed)


class ForwarderCollector(Collector):
    """
    The counters of the server's forwarder listeners (port forwards, the
    CONNECT and SOCKS5 proxies), labelled by listener: as many series as
    listeners configured, and failures by their fixed reasons.
    """

    def __init__(self, forwarders: Iterable[ForwarderStats]) -> None:
        self._forwarders = list(forwarders)

    def collect(self) -> Iterator[Metric]:
        labels = ["forwarder", "kind"]
        connections = CounterMetricFamily(f"{NAMESPACE}_forwarder_connections",
                                          "Connections a forwarder listener accepted", labels=labels)
        streams = CounterMetricFamily(f"{NAMESPACE}_forwarder_streams",
                                      "Streams a forwarder opened through a tunnel", labels=labels)
        open_now = GaugeMetricFamily(f"{NAMESPACE}_forwarder_streams_open",
                                     "A forwarder's streams still relaying", labels=labels)
        failures = CounterMetricFamily(f"{NAMESPACE}_forwarder_failures",
                                       "A forwarder's failed connections, by reason",
                                       labels=[*labels, "reason"])
        for stats in self._forwarders:
            names = [stats.name, stats.kind]
            connections.add_metric(names, stats.connections)
            streams.add_metric(names, stats.streams_total)
            open_now.add_metric(names, stats.streams_open)
            for reason, count in sorted(stats.failures.items()):
                failures.add_metric([*names, reason], count)
        yield from (connections, streams, open_now, failures)


class ServerMetrics:
    """
    The metrics of C{server}, on C{registry} (a new one by default):
    counters as its sessions' events happen, gauges read at scrape time.
    Register more collectors on L{registry} (e.g. forwarders').
    """

    def __init__(self, server: Server, registry: CollectorRegistry | None = None,
                 options: MetricsOptions | None = None) -> None:
        if server.session_factory.observer is not None:
            raise ValueError("the server's sessions are observed already")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.counters = TrafficCounters(self.registry, options)
        self.registry.register(_ServerCollector(server, self.counters))
        server.session_factory.observer = self.counters


class ClientMetrics:
    """The metrics of C{client} (a L{TunnelClient}), on C{registry} (a new one by default)."""

    def __init__(self, client: TunnelClient, registry: CollectorRegistry | None = None,
                 options: MetricsOptions | None = None) -> None:
        if client.session_factory.observer is not None:
            raise ValueError("the client's sessions are observed already")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.counters = TrafficCounters(self.registry, options)
        self.registry.register(_ClientCollector(client, self.counters))
        client.session_factory.observer = self.counters


#: The TYPE lines prometheus_client writes for Go's counters, and Go's own.
_GO_TYPES = [(f"# TYPE {name} untyped\n".encode(), f"# TYPE {name} counter\n".encode())
             for name in GO_COUNTERS]


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (0.0.4) of C{registry}, Go's counters named as Go names them."""
    text = generate_latest(registry)
    for theirs, go in _GO_TYPES:
        text = text.replace(theirs, go, 1)
    return text


#: The content type of L{render}'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
