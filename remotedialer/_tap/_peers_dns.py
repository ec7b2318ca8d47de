"""
The server program's C{--peers-dns NAME:PORT}: peers found by resolving a
name (a Kubernetes headless Service), see L{remotedialer.server._discovery}.
Parsing and wiring live here so the program's own module only calls
L{check} and L{service}.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from twisted.python import usage

from remotedialer.server._discovery import DNS_INTERVAL, DNS_URL_TEMPLATE, PeerDiscovery, peer_address

if TYPE_CHECKING:
    from remotedialer.server._server import Server

PARAMETERS: list[list[object]] = [
    ["peers-dns", None, None,
     "Peers from DNS: NAME:PORT, every A/AAAA record of NAME a peer at PORT (a Kubernetes headless "
     "Service); peer ids are IP:PORT, so --id must be this server's (e.g. $(POD_IP):8123)."],
    ["peers-dns-interval", None, DNS_INTERVAL, "Seconds between lookups of --peers-dns.", float],
    ["peers-dns-url", None, DNS_URL_TEMPLATE,
     "Tunnel URL of a discovered peer: {address} is IP:PORT ([IPv6]:PORT), {host} and {port} its parts."],
    ["peers-dns-server", None, None,
     "DNS server IP:PORT to ask for --peers-dns (default: the system's, /etc/resolv.conf)."],
]


def _split(flag: str, value: str) -> tuple[str, int]:
    name, sep, port_text = value.rpartition(":")
    name = name.strip("[]")
    if not sep or not name or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise usage.UsageError(f"--{flag} {value!r} is not NAME:PORT (port 1-65535)")
    return name, int(port_text)


def check(options: usage.Options) -> None:
    """Validate the --peers-dns flags (one-line usage errors naming the flag)."""
    options["peers_dns"] = None
    if not options["peers-dns"]:
        return
    name, port = _split("peers-dns", options["peers-dns"])
    if not (options["id"] and options["token"]):
        raise usage.UsageError(
            "--peers-dns needs --id (this server's IP:PORT) and a peer token (--token-file, or "
            "$REMOTEDIALER_PEER_TOKEN), shared by all the servers it finds")
    own_host, _, own_port = options["id"].rpartition(":")
    try:
        ipaddress.ip_address(own_host.strip("[]"))
        valid = own_port.isdigit() and peer_address(own_host.strip("[]"), int(own_port)) == options["id"]
    except ValueError:
        valid = False
    if not valid:
        raise usage.UsageError(
            f"--peers-dns: --id {options['id']!r} must be this server's address as {name} lists it, "
            f"IP:PORT (e.g. --id $(POD_IP):{port}): peers name discovered servers so")
    if not options["peers-dns-interval"] > 0:
        raise usage.UsageError(f"--peers-dns-interval must be over 0 s, not {options['peers-dns-interval']}")
    template = options["peers-dns-url"]
    try:
        url = template.format(address=peer_address("192.0.2.1", port), host="192.0.2.1", port=port)
    except (KeyError, IndexError, ValueError) as e:
        raise usage.UsageError(f"--peers-dns-url {template!r}: {e!s}") from None
    if not url.startswith(("ws://", "wss://")) or "192.0.2.1" not in url:
        raise usage.UsageError(
            f"--peers-dns-url {template!r}: must be a ws:// or wss:// URL with {{address}} or {{host}}")
    servers = None
    if options["peers-dns-server"]:
        host, server_port = _split("peers-dns-server", options["peers-dns-server"])
        try:
            ipaddress.ip_address(host)
        except ValueError:
            given = options["peers-dns-server"]
            raise usage.UsageError(f"--peers-dns-server {given!r}: not IP:PORT") from None
        servers = [(host, server_port)]
    options["peers_dns"] = (name, port, servers)


def service(options: usage.Options, server: Server) -> PeerDiscovery | None:
    """The discovery service the options ask for (a child of C{server}), or None."""
    if options["peers_dns"] is None:
        return None
    from twisted.names import client

    name, port, servers = options["peers_dns"]
    # A given DNS server is asked directly (no /etc/hosts, no resolv.conf
    # re-read every minute); else the system's resolver, as other programs.
    resolver = client.Resolver(servers=servers) if servers else client.createResolver()
    discovery = PeerDiscovery(server, name, port, options["token"], resolver=resolver,
                              interval=options["peers-dns-interval"], url_template=options["peers-dns-url"])
    discovery.setServiceParent(server)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
    return discovery
