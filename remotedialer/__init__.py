"""
remotedialer: a reverse-tunnel dialer for Twisted, speaking the wire
protocol of Go's rancher/remotedialer.

A client opens one WebSocket to a server; the server then dials TCP
connections "through" it, many streams multiplexed over that WebSocket,
each a real Twisted transport with PAUSE/RESUME back-pressure.

The package is built in floors, each importing only the floors below it
(a test of the import graph keeps it so; docs/architecture.md draws it):

    protocol    the sans-IO core: codec, multiplexer, events, exceptions
    tunnel      the Twisted adapter: WebSocket, session, stream transports
    client      the client role: a tunnel kept up, dials served
    server      the server role: registry, upgrade, auth, peering, drain,
                caller access, the splice
    frontdoor   the HTTP front door            (neither imports the other)
    proxies     port forwards, CONNECT, SOCKS5
    ops         metrics, status, admin endpoint, JSON logs
    _tap        the twistd programs (nothing imports them)

Each subpackage's docstring maps its modules.  The public names below are
loaded on first use, so C{import remotedialer.protocol} stays free of
Twisted; C{remotedialer.testing} has the test doubles.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

try:
    __version__ = _version("remotedialer")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"

#: Each public name and the subpackage that exports it.
_PUBLIC = {
    # protocol
    "AuthorizationError": "protocol",
    "FlowLimits": "protocol",
    "MalformedMessage": "protocol",
    "SessionLimits": "protocol",
    "UpgradeLimits": "protocol",
    # tunnel
    "ClientNotConnected": "tunnel",
    "ProxyError": "tunnel",
    "Credentials": "tunnel",
    "IDialPolicy": "tunnel",
    "IPeerObserver": "tunnel",
    "ISession": "tunnel",
    "ISessionObserver": "tunnel",
    "ISessionOwner": "tunnel",
    "IStreamOpener": "tunnel",
    "ITrafficObserver": "tunnel",
    "ITunnelAuthorizer": "tunnel",
    "Identity": "tunnel",
    "ServerDraining": "tunnel",
    "Session": "tunnel",
    "SessionFactory": "tunnel",
    "StreamError": "tunnel",
    "TunnelAddress": "tunnel",
    "TunnelAgentEndpointFactory": "tunnel",
    "TunnelEndpoint": "tunnel",
    "TunnelStream": "tunnel",
    "nvx_active": "tunnel",
    "tunnel_agent": "tunnel",
    # client
    "DialACL": "client",
    "LocalDialer": "client",
    "ProxyConnectEndpoint": "client",
    "ProxyRule": "client",
    "TunnelClient": "client",
    "allow_all": "client",
    "allow_patterns": "client",
    "deny_all": "client",
    "endpoint_for_url": "client",
    "parse_rule": "client",
    # server
    "CertificateAuthorizer": "server",
    "FailureLimiter": "server",
    "Forwarder": "server",
    "ForwarderStats": "server",
    "FrontDoorAccess": "server",
    "HeaderGuardFactory": "server",
    "OwnListeners": "server",
    "PeerDiscovery": "server",
    "ProxyAccess": "server",
    "Route": "server",
    "Server": "server",
    "ServerSite": "server",
    "TokenAuthorizer": "server",
    "TrustedProxies": "server",
    "TunnelResource": "server",
    "hash_token": "server",
    "header_authorizer": "server",
    # frontdoor
    "FrontDoor": "frontdoor",
    "InsecureTLSPolicy": "frontdoor",
    # proxies
    "ConnectProxyFactory": "proxies",
    "PortForwardFactory": "proxies",
    "SocksProxyFactory": "proxies",
    # ops
    "AdminEndpoint": "ops",
    "AdminSite": "ops",
    "ClientMetrics": "ops",
    "MetricsOptions": "ops",
    "ServerMetrics": "ops",
    "client_status": "ops",
    "json_log_observer": "ops",
    "server_status": "ops",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    try:
        package = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'remotedialer' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"remotedialer.{package}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:
    from remotedialer.client import (
        DialACL as DialACL,
    )
    from remotedialer.client import (
        LocalDialer as LocalDialer,
    )
    from remotedialer.client import (
        ProxyConnectEndpoint as ProxyConnectEndpoint,
    )
    from remotedialer.client import (
        ProxyRule as ProxyRule,
    )
    from remotedialer.client import (
        TunnelClient as TunnelClient,
    )
    from remotedialer.client import (
        allow_all as allow_all,
    )
    from remotedialer.client import (
        allow_patterns as allow_patterns,
    )
    from remotedialer.client import (
        deny_all as deny_all,
    )
    from remotedialer.client import (
        endpoint_for_url as endpoint_for_url,
    )
    from remotedialer.client import (
        parse_rule as parse_rule,
    )
    from remotedialer.frontdoor import (
        FrontDoor as FrontDoor,
    )
    from remotedialer.frontdoor import (
        InsecureTLSPolicy as InsecureTLSPolicy,
    )
    from remotedialer.ops import (
        AdminEndpoint as AdminEndpoint,
    )
    from remotedialer.ops import (
        AdminSite as AdminSite,
    )
    from remotedialer.ops import (
        ClientMetrics as ClientMetrics,
    )
    from remotedialer.ops import (
        MetricsOptions as MetricsOptions,
    )
    from remotedialer.ops import (
        ServerMetrics as ServerMetrics,
    )
    from remotedialer.ops import (
        client_status as client_status,
    )
    from remotedialer.ops import (
        json_log_observer as json_log_observer,
    )
    from remotedialer.ops import (
        server_status as server_status,
    )
    from remotedialer.protocol import (
        AuthorizationError as AuthorizationError,
    )
    from remotedialer.protocol import (
        FlowLimits as FlowLimits,
    )
    from remotedialer.protocol import (
        MalformedMessage as MalformedMessage,
    )
    from remotedialer.protocol import (
        SessionLimits as SessionLimits,
    )
    from remotedialer.protocol import (
        UpgradeLimits as UpgradeLimits,
    )
    from remotedialer.proxies import (
        ConnectProxyFactory as ConnectProxyFactory,
    )
    from remotedialer.proxies import (
        PortForwardFactory as PortForwardFactory,
    )
    from remotedialer.proxies import (
        SocksProxyFactory as SocksProxyFactory,
    )
    from remotedialer.server import (
        CertificateAuthorizer as CertificateAuthorizer,
    )
    from remotedialer.server import (
        FailureLimiter as FailureLimiter,
    )
    from remotedialer.server import (
        Forwarder as Forwarder,
    )
    from remotedialer.server import (
        ForwarderStats as ForwarderStats,
    )
    from remotedialer.server import (
        FrontDoorAccess as FrontDoorAccess,
    )
    from remotedialer.server import (
        HeaderGuardFactory as HeaderGuardFactory,
    )
    from remotedialer.server import (
        PeerDiscovery as PeerDiscovery,
    )
    from remotedialer.server import (
        ProxyAccess as ProxyAccess,
    )
    from remotedialer.server import (
        Route as Route,
    )
    from remotedialer.server import (
        Server as Server,
    )
    from remotedialer.server import (
        ServerSite as ServerSite,
    )
    from remotedialer.server import (
        TokenAuthorizer as TokenAuthorizer,
    )
    from remotedialer.server import (
        TrustedProxies as TrustedProxies,
    )
    from remotedialer.server import (
        TunnelResource as TunnelResource,
    )
    from remotedialer.server import (
        hash_token as hash_token,
    )
    from remotedialer.server import (
        header_authorizer as header_authorizer,
    )
    from remotedialer.tunnel import (
        ClientNotConnected as ClientNotConnected,
    )
    from remotedialer.tunnel import (
        Credentials as Credentials,
    )
    from remotedialer.tunnel import (
        Identity as Identity,
    )
    from remotedialer.tunnel import (
        IDialPolicy as IDialPolicy,
    )
    from remotedialer.tunnel import (
        IPeerObserver as IPeerObserver,
    )
    from remotedialer.tunnel import (
        ISession as ISession,
    )
    from remotedialer.tunnel import (
        ISessionObserver as ISessionObserver,
    )
    from remotedialer.tunnel import (
        ISessionOwner as ISessionOwner,
    )
    from remotedialer.tunnel import (
        IStreamOpener as IStreamOpener,
    )
    from remotedialer.tunnel import (
        ITrafficObserver as ITrafficObserver,
    )
    from remotedialer.tunnel import (
        ITunnelAuthorizer as ITunnelAuthorizer,
    )
    from remotedialer.tunnel import (
        ProxyError as ProxyError,
    )
    from remotedialer.tunnel import (
        ServerDraining as ServerDraining,
    )
    from remotedialer.tunnel import (
        Session as Session,
    )
    from remotedialer.tunnel import (
        SessionFactory as SessionFactory,
    )
    from remotedialer.tunnel import (
        StreamError as StreamError,
    )
    from remotedialer.tunnel import (
        TunnelAddress as TunnelAddress,
    )
    from remotedialer.tunnel import (
        TunnelAgentEndpointFactory as TunnelAgentEndpointFactory,
    )
    from remotedialer.tunnel import (
        TunnelEndpoint as TunnelEndpoint,
    )
    from remotedialer.tunnel import (
        TunnelStream as TunnelStream,
    )
    from remotedialer.tunnel import (
        nvx_active as nvx_active,
    )
    from remotedialer.tunnel import (
        tunnel_agent as tunnel_agent,
    )
