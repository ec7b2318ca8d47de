"""
A fleet of library TunnelClients in one process, for the storm scenario:

    python -m benchmarks.fleet --url WS_URL --tokens FILE [--spread]

C{FILE} holds one C{<client id> <token>} a line; each client sends its id
as C{X-Tunnel-ID} and its token as C{Authorization: Bearer} (what the
server program's --clients-file checks; Go's example server reads the id
alone).  With C{--spread} client i dials from its own loopback address,
127.0.x.y (x = 1 + i // 250, y = 1 + i % 250), as if every agent had its
own address; without, all dial from 127.0.0.1, as agents behind one load
balancer or NAT.

JSON-lines commands on stdin (L{benchmarks.harness.serve_child}):

    {"cmd": "connect", "count": N, "batch": B}   start N clients, B at a time; answers when all are up
    {"cmd": "mark"}                              now is t0: the server is about to be killed
    {"cmd": "wait_back", "timeout": T}           answers when every client has a new tunnel (or at T):
                                                 seconds from t0 to each, and what the clients were told
"""

from __future__ import annotations

import argparse
import time

from zope.interface import directlyProvides, providedBy

from benchmarks.harness import serve_child


class _BoundReactor:
    """The reactor, but every connectTCP binds C{source} (HostnameEndpoint takes no bindAddress here)."""

    def __init__(self, reactor, source: str) -> None:
        self._reactor = reactor
        self._source = source
        directlyProvides(self, *providedBy(reactor))

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):  # (Twisted's name)
        return self._reactor.connectTCP(host, port, factory, timeout=timeout, bindAddress=(self._source, 0))

    def __getattr__(self, name):
        return getattr(self._reactor, name)


def source_address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--spread", action="store_true", help="each client from its own 127.0.x.y")
    args = parser.parse_args(argv)
    with open(args.tokens) as f:
        credentials = [line.split() for line in f if line.strip()]

    from twisted.internet import defer, reactor
    from twisted.logger import globalLogPublisher

    from remotedialer import TunnelClient, allow_all

    clients: list = []
    state = {"t0": None, "back": {}, "told": {}}

    def observe(event) -> None:
        reason = event.get("reason")
        if state["t0"] is None or not isinstance(reason, str) or "retry_in" not in event:
            return
        if "answered 429" in reason:
            kind = "429"
        elif "answered 503" in reason:
            kind = "503"
        elif "refused" in reason:
            kind = "connection refused"
        elif "answered" in reason:
            kind = "other answer"
        else:
            kind = "other failure"
        state["told"][kind] = state["told"].get(kind, 0) + 1

    globalLogPublisher.addObserver(observe)

    def on_connect(key: str):
        def hook(session) -> None:
            if state["t0"] is not None and key not in state["back"]:
                state["back"][key] = time.monotonic() - state["t0"]
        return hook

    async def connect(count: int, batch: int) -> dict:
        t0 = time.perf_counter()
        while len(clients) < count:
            waits = []
            for _ in range(min(batch, count - len(clients))):
                i = len(clients)
                key, token = credentials[i]
                client = TunnelClient(
                    args.url, connect_authorizer=allow_all, client_key=key,
                    headers={"X-Tunnel-ID": key, "Authorization": f"Bearer {token}"},
                    reactor=_BoundReactor(reactor, source_address(i)) if args.spread else reactor,
                    on_connect=on_connect(key), proxy="")
                clients.append(client)
                client.startService()
                waits.append(client.when_connected())
            await defer.gatherResults(waits)
        return {"ok": True, "connected": len(clients), "elapsed": time.perf_counter() - t0}

    async def wait_back(timeout: float) -> dict:
        from twisted.internet.task import deferLater

        deadline = time.monotonic() + timeout
        while len(state["back"]) < len(clients) and time.monotonic() < deadline:
            await deferLater(reactor, 0.02, lambda: None)
        return {"ok": len(state["back"]) == len(clients), "clients": len(clients),
                "times": sorted(state["back"].values()), "told": state["told"]}

    def on_line(channel, cmd) -> None:
        name = cmd.get("cmd")
        if name == "connect":
            d = defer.Deferred.fromCoroutine(connect(cmd["count"], cmd.get("batch", 100)))
        elif name == "mark":
            state.update(t0=time.monotonic(), back={}, told={})
            d = defer.succeed({"ok": True})
        elif name == "wait_back":
            d = defer.Deferred.fromCoroutine(wait_back(cmd.get("timeout", 60)))
        else:
            d = defer.succeed({"ok": False, "error": f"unknown command {name!r}"})
        d.addErrback(lambda f: {"ok": False, "error": f"{f.type.__name__}: {f.getErrorMessage()}"})
        d.addCallback(lambda result: channel.send(dict(result, id=cmd.get("id"))))

    serve_child(lambda channel: channel.send({"ready": True}), on_line)


if __name__ == "__main__":
    main()
