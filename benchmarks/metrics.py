"""
What metrics cost: figures, each next to its baseline in the same run.

    .venv/bin/python -m benchmarks.metrics [--quick] [--streams N] [--clients N]

  1. Stream churn over real loopback sockets (a Server and a TunnelClient in
     this process, an echo target): open a stream, echo 100 bytes, close,
     one after another; streams per second with ServerMetrics and
     ClientMetrics on both ends, against a pair without metrics, made and
     measured in alternating order, round after round.
  2. A scrape of a server holding many client sessions with a few streams
     each (sessions in memory, no sockets): the time to render /metrics and
     its size, and the time to build /status (all of it, and ?limit=200).

Everything listens on 127.0.0.1; exit status 0 unless a transfer failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer import ClientMetrics, Server, ServerMetrics, Session, TunnelClient, allow_all
from remotedialer.ops._metrics import render
from remotedialer.ops._status import server_status


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class _Once(Protocol):
    """Writes a payload, fires C{done} once it has all come back, then closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.done.called:
            self.transport.loseConnection()
            self.done.callback(None)


class _Pair:
    """A server and a connected client on loopback, with or without metrics."""

    async def start(self, metrics: bool, key: str) -> None:
        self.server = Server(reactor=reactor)
        self.key = key
        if metrics:
            ServerMetrics(self.server)
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        site = Site(root)
        site.noisy = False
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        url = f"ws://127.0.0.1:{self.port.getHost().port}/connect"
        self.client = TunnelClient(url, headers={"X-Tunnel-ID": key}, reactor=reactor, client_key=key,
                                   connect_authorizer=allow_all)
        if metrics:
            ClientMetrics(self.client)
        self.client.startService()
        await self.client.when_connected()
        while not self.server.has_session(key):
            await task.deferLater(reactor, 0.01, lambda: None)

    async def churn(self, target: str, streams: int) -> float:
        """Streams per second, one after another."""
        endpoint = self.server.endpoint(self.key, "tcp", target)
        started = time.perf_counter()
        for _ in range(streams):
            protocol = _Once(b"x" * 100)
            await endpoint.connect(Factory.forProtocol(lambda p=protocol: p))
            await protocol.done
            if protocol.received != protocol.payload:
                raise AssertionError("the echo came back wrong")
        return streams / (time.perf_counter() - started)

    async def stop(self) -> None:
        await self.client.stopService()
        await self.port.stopListening()


async def churn_figures(streams: int, rounds: int) -> dict[str, object]:
    """
    Each round makes a fresh pair of each kind, and which comes first
    alternates (two identical pairs in one process differ by a few percent,
    the first made being the faster): the ratio is the mean of the rounds'.
    """
    echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_Echo))
    target = f"127.0.0.1:{echo.getHost().port}"
    without, with_, ratios = [], [], []
    for round_ in range(rounds):
        kinds = [False, True] if round_ % 2 == 0 else [True, False]
        pairs = {}
        for metrics in kinds:
            pairs[metrics] = _Pair()
            await pairs[metrics].start(metrics, f"round{round_}-{metrics}")
            await pairs[metrics].churn(target, max(streams // 10, 1))  # warm up
        figures = {}
        for metrics in kinds:
            figures[metrics] = await pairs[metrics].churn(target, streams)
        for pair in pairs.values():
            await pair.stop()
        without.append(figures[False])
        with_.append(figures[True])
        ratios.append(figures[True] / figures[False])
    await echo.stopListening()
    return {"streams_per_s_without": statistics.median(without),
            "streams_per_s_with": statistics.median(with_),
            "ratio": statistics.mean(ratios), "ratios": ratios,
            "spread_without": [min(without), max(without)], "spread_with": [min(with_), max(with_)]}


def scrape_figures(clients: int, streams_each: int) -> dict[str, object]:
    server = Server(reactor=task.Clock())
    metrics = ServerMetrics(server)
    for i in range(clients):
        session = Session(lambda data: None, client_key=f"client-{i}", clock=server.reactor,
                          observer=metrics.counters)
        session.remote_addr = f"10.0.{i // 250}.{i % 250}:40000"
        server.sessions.add(session)
        for _ in range(streams_each):
            session.open_stream("tcp", "10.96.0.1:443")
    started = time.perf_counter()
    text = render(metrics.registry)
    render_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    full = json.dumps(server_status(server))
    status_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    limited = json.dumps(server_status(server, 200))
    limited_ms = (time.perf_counter() - started) * 1000
    return {"clients": clients, "streams": clients * streams_each,
            "metrics_ms": render_ms, "metrics_kib": len(text) / 1024, "metrics_lines": text.count(b"\n"),
            "status_ms": status_ms, "status_kib": len(full) / 1024,
            "status_limit200_ms": limited_ms, "status_limit200_kib": len(limited) / 1024}


async def main(args: argparse.Namespace) -> int:
    churn = await churn_figures(args.streams, args.rounds)
    print(f"stream churn (open, echo 100 B, close), {args.streams} streams x {args.rounds} rounds:")
    print(f"  without metrics {churn['streams_per_s_without']:8.0f} streams/s "
          f"(spread {churn['spread_without'][0]:.0f}-{churn['spread_without'][1]:.0f})")
    print(f"  with metrics    {churn['streams_per_s_with']:8.0f} streams/s "
          f"(spread {churn['spread_with'][0]:.0f}-{churn['spread_with'][1]:.0f}), "
          f"ratio {churn['ratio']:.3f} (the mean of the rounds': "
          f"{', '.join(f'{r:.3f}' for r in churn['ratios'])})")
    scrape = scrape_figures(args.clients, args.streams_each)
    print(f"scrape of {scrape['clients']} clients with {scrape['streams']} streams:")
    print(f"  /metrics {scrape['metrics_ms']:.1f} ms, {scrape['metrics_kib']:.0f} KiB, "
          f"{scrape['metrics_lines']} lines")
    print(f"  /status  {scrape['status_ms']:.1f} ms, {scrape['status_kib']:.0f} KiB; "
          f"?limit=200 {scrape['status_limit200_ms']:.1f} ms, {scrape['status_limit200_kib']:.0f} KiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"churn": churn, "scrape": scrape}, f, indent=2)
    return 0


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics",
                                     description="What metrics cost, next to a baseline measured alike.")
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer streams and clients")
    parser.add_argument("--streams", type=int, default=None, help="streams per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, best even (default 6)")
    parser.add_argument("--clients", type=int, default=None, help="client sessions to scrape (default 2000)")
    parser.add_argument("--streams-each", type=int, default=3, help="streams per client session")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    args.streams = args.streams or (200 if args.quick else 1000)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.clients = args.clients or (200 if args.quick else 2000)
    outcome: list[int] = []

    async def go() -> None:
        outcome.append(await main(args))

    def finished(result: object) -> None:
        if isinstance(result, Failure):
            result.printTraceback()
            outcome.append(1)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(go()).addBoth(finished))
    reactor.run()
    sys.exit(outcome[-1] if outcome else 1)


if __name__ == "__main__":
    run()
