"""
The programs' admin endpoint: C{--admin-listen ENDPOINT} (off unless given)
serves metrics, health, readiness, status and the status page
(L{remotedialer.ops._admin}); C{--metrics-addr-label} and
C{--metrics-no-clientkey-label} choose the labels' cost.

A bare port (C{--admin-listen 9125}) listens on loopback only; a full
endpoint description is used as written (C{tcp:9125} for Kubernetes
probes on the pod's address, warned: the endpoint has no authentication).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from twisted.application.service import IService, MultiService
from twisted.internet import endpoints
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python import usage

from remotedialer._tap._listen import DEFAULT_BACKLOG, Listening, loopback_only, port_of
from remotedialer.client._client import TunnelClient
from remotedialer.ops._admin import AdminEndpoint, AdminSite
from remotedialer.ops._metrics import ClientMetrics, ForwarderCollector, MetricsOptions, ServerMetrics
from remotedialer.ops._status import client_status, server_status
from remotedialer.protocol._text import printable
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.server._guard import HTTP_1_1_ONLY, HeaderGuardFactory
from remotedialer.server._own import OwnListeners
from remotedialer.server._server import Server

__all__ = ["AdminOptions", "ClientProgram", "loopback_only", "serve_client_admin", "serve_server_admin"]

log = Logger()


class AdminOptions:
    """The admin flags, for a program's Options (usage.Options gathers them from every base)."""

    optFlags = [
        ["metrics-addr-label", None,
         "Label the connection counters with each target address (Go's addr label: a series per target)."],
        ["metrics-no-clientkey-label", None,
         "Leave Go's clientkey label empty (about 7 series per client: heavy with thousands of clients)."],
    ]

    def opt_admin_listen(self, description: str) -> None:
        """Serve /metrics, /healthz, /readyz, /status and a status page here (a port: on loopback)."""
        if description.isdigit():
            description = f"tcp:{description}:interface=127.0.0.1"
        from twisted.internet import reactor

        try:
            endpoints.serverFromString(reactor, description)
        except Exception as e:  # a bad description: one line, no traceback
            raise usage.UsageError(f"--admin-listen {description!r}: {printable(str(e))}") from None
        port = port_of(description)
        if port is not None and not 0 <= port <= 65535:
            raise usage.UsageError(f"--admin-listen {description!r}: port {port} is not 0-65535")
        self["admin_listen"] = description  # type: ignore[index]  # usage.Options is a dict


def _metrics_options(options: Any) -> MetricsOptions:
    return MetricsOptions(addr_label=bool(options["metrics-addr-label"]),
                          clientkey_label=not options["metrics-no-clientkey-label"])


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class _AdminListener(Listening):
    """The admin listener: warns at start when it is reachable from other hosts."""

    def __init__(self, program: str, description: str, factory: IProtocolFactory,
                 own: OwnListeners | None = None, backlog: int = DEFAULT_BACKLOG) -> None:
        super().__init__("admin-listen", description, factory, program, own, backlog)
        self._description = description

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        if not loopback_only(self._description):
            log.warn("--admin-listen {description}: not loopback only, and the admin endpoint has no "
                     "authentication (it shows client ids and addresses)", description=self._description)




def _listen(parent: MultiService, program: str, description: str, admin: AdminEndpoint,
            own: OwnListeners | None = None, backlog: int = DEFAULT_BACKLOG) -> None:
    # The admin site behind the same request-head limits as the tunnel's
    # listener; idle connections (a prober's, a scraper's) are closed after
    # a minute.  Probes and scrapers speak HTTP/1.1: on TLS (ssl:...) it is
    # the one protocol offered (ALPN).
    site = HeaderGuardFactory(AdminSite(admin, timeout=60), name="admin endpoint", alpn=HTTP_1_1_ONLY)
    _AdminListener(program, description, site, own, backlog).setServiceParent(parent)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651


def serve_server_admin(top: MultiService, options: Any, server: Server, listening: IProtocolFactory,
                       forwarders: Iterable[ForwarderStats] = ()) -> AdminEndpoint | None:
    """
    With --admin-listen, the server's admin endpoint, listening as a child
    of C{top}: ready once C{listening} (the tunnel's factory) listens, and
    not while the server drains (the endpoint stays up until the drain ends);
    the C{forwarders}' counters in its metrics and status.
    """
    description = options.get("admin_listen")
    if description is None:
        return None
    metrics = ServerMetrics(server, _registry(), _metrics_options(options))

    def listening_check() -> str | None:
        return None if getattr(listening, "numPorts", 0) > 0 else "the tunnel listener is not listening"

    def drain_check() -> str | None:
        return "draining: the server is shutting down" if server.draining else None

    admin = AdminEndpoint(metrics.registry, lambda limit: server_status(server, limit),
                          [listening_check, drain_check])
    forwarders = list(forwarders)
    if forwarders:
        metrics.registry.register(ForwarderCollector(forwarders))
        admin.status_sections["forwarders"] = lambda: [stats.snapshot() for stats in forwarders]
    # (One of the server's own listeners, which no front-door or proxy request may target.)
    _listen(top, "remotedialer-server", description, admin, options["frontdoor_access"].own,
            options.get("backlog", DEFAULT_BACKLOG))
    return admin


class ClientProgram(MultiService):
    """The client program with its admin endpoint: the L{TunnelClient} and the admin listener."""

    client: TunnelClient
    admin: AdminEndpoint


def serve_client_admin(client: TunnelClient, options: Any) -> IService:
    """
    The client program's service: C{client} itself, or with --admin-listen
    a L{ClientProgram} of the client and its admin endpoint (ready while
    the tunnel is up).
    """
    description = options.get("admin_listen")
    if description is None:
        return client
    metrics = ClientMetrics(client, _registry(), _metrics_options(options))

    def tunnel_check() -> str | None:
        return None if client.ready else "the tunnel is not established"

    admin = AdminEndpoint(metrics.registry, lambda limit: client_status(client), [tunnel_check])
    program = ClientProgram()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
    client.setServiceParent(program)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
    _listen(program, "remotedialer-client", description, admin,
            backlog=options.get("backlog", DEFAULT_BACKLOG))
    program.client = client
    program.admin = admin
    return program
