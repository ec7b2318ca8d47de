"""
``twistd remotedialer-server``: the Go example server's flags, on Twisted
endpoints.  Serves the tunnel at /connect and the HTTP front door at /client/.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer._frontdoor import FrontDoor
from remotedialer._server import Server
from remotedialer._tap._common import data_debug, load_ca_file

DEFAULT_LISTEN = "tcp:8123:interface=127.0.0.1"


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
    synopsis = "[--listen ENDPOINT] [--id ID --token TOKEN --peers id:token:url,...] [--debug]"
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
    ]
    optFlags = [["debug", "d", "Log every tunnel message."]]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        try:
            endpoints.serverFromString(reactor, self["listen"])
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {self['listen']!r}: {e}") from None
        self["peer_list"] = parse_peers(self["peers"])
        if self["peer_list"] and not (self["id"] and self["token"]):
            raise usage.UsageError("--peers needs --id and --token")
        self["peer_trust_root"] = None
        if self["peer-ca-file"]:
            self["peer_trust_root"] = load_ca_file("peer-ca-file", self["peer-ca-file"])


def makeService(options: Options) -> MultiService:
    server = Server(trace=data_debug(options["debug"]),
                    peer_id=options["id"], peer_token=options["token"],
                    peer_trust_root=options["peer_trust_root"])
    for peer_id, token, url in options["peer_list"]:
        server.add_peer(peer_id, token, url)
    root = Resource()
    root.putChild(b"connect", server.resource)
    root.putChild(b"client", FrontDoor(server))
    top = MultiService()
    strports.service(options["listen"], Site(root)).setServiceParent(top)
    server.setServiceParent(top)
    top.server = server
    return top
