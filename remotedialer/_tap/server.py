"""
``twistd remotedialer-server``: the Go example server's flags, on Twisted
endpoints.  Serves the tunnel at /connect and the HTTP front door at /client/.

The front door verifies https targets against the system trust store, or
the CAs of --target-ca-file; --target-insecure (self-signed clusters) turns
verification off, with a warning at start.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer._frontdoor import FrontDoor, InsecureTLSPolicy, refuse_unknown_client
from remotedialer._guard import HeaderGuardFactory
from remotedialer._server import Server
from remotedialer._tap._common import data_debug, limit_parameters, load_ca_file, parse_limits
from remotedialer._websocket import IDLE_TIMEOUT, PING_INTERVAL, check_keepalive

DEFAULT_LISTEN = "tcp:8123:interface=127.0.0.1"
log = Logger()


def parse_peers(text: str) -> list[tuple[str, str, str]]:
    """Parse Go's ``-peers id:token:url,...``."""
    peers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        peer_id, _, rest = item.partition(":")
        token, _, url = rest.partition(":")
        if not peer_id or not token or not url.startswith(("ws://", "wss://")):
            raise usage.UsageError(f"--peers: {item!r} is not id:token:ws[s]://host:port/path")
        peers.append((peer_id, token, url))
    return peers


class Options(usage.Options):
    synopsis = ("[--listen ENDPOINT] [--id ID --token TOKEN --peers id:token:url,...] "
                "[--target-ca-file PEM | --target-insecure] [--debug]")
    longdesc = (
        "Accepts remotedialer tunnels at /connect (the client key is the X-Tunnel-ID "
        "header) and proxies GET /client/<key>/<scheme>/<host>/<path> through them."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Twisted server endpoint to listen on (tcp:..., ssl:...)."],
        ["id", None, None, "This server's peer id."],
        ["token", None, None, "This server's peer token."],
        ["peers", None, "", "Peers as id:token:url,... (url: the peer's tunnel URL)."],
        ["peer-ca-file", None, None, "PEM CA certificates to verify wss:// peer URLs with."],
        ["target-ca-file", None, None,
         "PEM CA certificates to verify the front door's https targets with (default: system trust store)."],
        ["ping-interval", None, PING_INTERVAL,
         "Seconds between the keepalive pings of our peer links (Go: 5).", float],
        ["idle-timeout", None, IDLE_TIMEOUT,
         "Seconds of silence after which a tunnel or peer link is dead (Go: 60).", float],
        *limit_parameters(upgrade=True),
    ]
    optFlags = [
        ["debug", "d", "Log every tunnel message."],
        ["target-insecure", None, "Do not verify the front door's https targets (self-signed clusters)."],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        try:
            endpoints.serverFromString(reactor, self["listen"])
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {self['listen']!r}: {e}") from None
        try:
            # Only peer links ping: without peers the interval just has to be sane.
            check_keepalive(self["ping-interval"] if self["peers"] else None, self["idle-timeout"])
            if not self["ping-interval"] > 0:
                raise ValueError(f"ping interval must be over 0 s, not {self['ping-interval']}")
        except ValueError as e:
            raise usage.UsageError(f"--ping-interval/--idle-timeout: {e}") from None
        parse_limits(self, upgrade=True)
        self["peer_list"] = parse_peers(self["peers"])
        if self["peer_list"] and not (self["id"] and self["token"]):
            raise usage.UsageError("--peers needs --id and --token")
        self["peer_trust_root"] = None
        if self["peer-ca-file"]:
            self["peer_trust_root"] = load_ca_file("peer-ca-file", self["peer-ca-file"])
        if self["target-ca-file"] and self["target-insecure"]:
            raise usage.UsageError("--target-ca-file and --target-insecure contradict each other")
        if self["target-insecure"]:
            self["target_tls_policy"] = InsecureTLSPolicy()
        elif self["target-ca-file"]:
            trust_root = load_ca_file("target-ca-file", self["target-ca-file"])
            self["target_tls_policy"] = BrowserLikePolicyForHTTPS(trustRoot=trust_root)
        else:
            self["target_tls_policy"] = BrowserLikePolicyForHTTPS()


class ServerProgram(MultiService):
    """
    The program's service: the listening site and the L{Server}, with both
    the server and its front door at hand (tests reach them).
    """

    server: Server
    front_door: FrontDoor


def makeService(options: Options) -> ServerProgram:
    server = Server(trace=data_debug(options["debug"]),
                    peer_id=options["id"], peer_token=options["token"],
                    peer_trust_root=options["peer_trust_root"],
                    ping_interval=options["ping-interval"], idle_timeout=options["idle-timeout"],
                    session_limits=options["session_limits"], flow_limits=options["flow_limits"])
    for peer_id, token, url in options["peer_list"]:
        server.add_peer(peer_id, token, url)
    if options["target-insecure"]:
        log.warn("--target-insecure: https targets of the front door are not verified; "
                 "anyone on the path to them can impersonate them")
    root = Resource()
    root.putChild(b"connect", server.resource)
    upgrade = options["upgrade_limits"]
    front_door = FrontDoor(server, tls_policy=options["target_tls_policy"],
                           response_head_bytes=upgrade.header_bytes, response_headers=upgrade.max_headers)
    root.putChild(b"client", front_door)
    top = ServerProgram()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
    site = HeaderGuardFactory(Site(root), options["upgrade_limits"], early=refuse_unknown_client(server))
    strports.service(options["listen"], site).setServiceParent(top)
    server.setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
    top.server = server
    top.front_door = front_door
    return top
