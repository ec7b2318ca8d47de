"""
``twistd remotedialer-server``: the Go example server's flags, on Twisted
endpoints.  Serves the tunnel at /connect and the HTTP front door at /client/.

Who may connect: per-client tokens (--clients-file, re-read on SIGHUP) or
mutual TLS (--tls-cert/--tls-key with --client-ca-file: the client id is
the certificate's); the program refuses to start with neither unless
--insecure-any-client is given, as Go's example server (any X-Tunnel-ID),
which is then logged at start and for every new client.

The front door answers loopback callers only, unless --frontdoor-tokens-file
(bearer tokens, each for every client or for those its line names with
clients=; re-read on SIGHUP) or --frontdoor-open; it may have its own
listener (--frontdoor-listen).  It verifies https targets against the
system trust store, or the CAs of --target-ca-file; --target-insecure
(self-signed clusters) turns verification off, with a warning at start.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from remotedialer._tap import _fleet as fleet
from remotedialer._tap import _frontdoor as frontdoor_tuning
from remotedialer._tap import _peers_dns as peers_dns
from remotedialer._tap._admin import AdminOptions, serve_server_admin
from remotedialer._tap._common import (
    VersionOption,
    data_debug,
    flags_named_in_errors,
    limit_parameters,
    load_ca_file,
    parse_limits,
)
from remotedialer._tap._forwarders import ForwarderOptions, add_forwarders, parse_forwarders
from remotedialer._tap._listen import Listening, check_listen, plan, this_host
from remotedialer._tap._logging import LogFormatOption
from remotedialer.client._proxyrule import ProxyRule, proxy_rule
from remotedialer.frontdoor._resource import FrontDoor, refuse_unknown_client
from remotedialer.frontdoor._tls import InsecureTLSPolicy
from remotedialer.ops._admin import AdminEndpoint
from remotedialer.protocol._text import printable
from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._auth import CertificateAuthorizer, TokenAuthorizer, TokenFile, secret_from
from remotedialer.server._drain import DRAIN_TIMEOUT, DrainGate, DrainOnStop
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.server._guard import HTTP_1_1_ONLY, HeaderGuardFactory
from remotedialer.server._own import OwnListeners
from remotedialer.server._resource import header_authorizer
from remotedialer.server._server import Server
from remotedialer.server._site import ServerSite
from remotedialer.tunnel._websocket import IDLE_TIMEOUT, PING_INTERVAL, check_keepalive

DEFAULT_LISTEN = "tcp:8123:interface=127.0.0.1"
#: Request bodies streamed to the front door as they arrive (remotedialer.server._site).
STREAMED = (b"/client/",)
#: Where the peer token may come from instead of --token.
PEER_TOKEN_ENV = "REMOTEDIALER_PEER_TOKEN"
log = Logger()

_NO_AUTH = ("the server needs client authentication: --clients-file FILE (per-client tokens) or "
            "--tls-cert/--tls-key with --client-ca-file (mutual TLS); --insecure-any-client accepts "
            "any client, as Go's example server")


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


@flags_named_in_errors
class Options(VersionOption, LogFormatOption, ForwarderOptions, AdminOptions, fleet.FleetOptions,
              usage.Options):
    synopsis = ("[--listen ENDPOINT] (--clients-file FILE | --tls-cert PEM --tls-key PEM "
                "--client-ca-file PEM | --insecure-any-client) [--id ID --token-file FILE --peers-file FILE] "
                "[--target-ca-file PEM | --target-insecure] [--debug]")
    longdesc = (
        "Accepts remotedialer tunnels at /connect from authenticated clients (per-client tokens or "
        "mutual TLS) and proxies /client/<key>/<scheme>/<host>/<path> through them for loopback "
        "callers (or authenticated ones: --frontdoor-tokens-file)."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Twisted server endpoint to listen on (tcp:..., ssl:...)."],
        ["id", None, None, "This server's peer id."],
        ["token", None, None, "This server's peer token (prefer --token-file, or $REMOTEDIALER_PEER_TOKEN)."],
        ["token-file", None, None, "File holding this server's peer token."],
        ["clients-file", None, None,
         "Clients allowed to connect: lines '<client id> sha256:<hex of its token>' (re-read on SIGHUP)."],
        ["tls-cert", None, None, "PEM certificate (chain) of a TLS listener we make for --listen tcp:..."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["client-ca-file", None, None,
         "With --tls-cert: require client certificates from these CAs; "
         "the client id is the certificate's CN."],
        ["frontdoor-listen", None, None,
         "Serve the front door on this endpoint instead of the tunnel's listener."],
        ["frontdoor-tokens-file", None, None,
         "Front-door and proxy callers must present a token listed here (front door: "
         "'Proxy-Authorization: Bearer <token>', or 'Authorization: Bearer <token>' as kubectl sends it, "
         "which is then not passed on; proxies: the proxy password). Lines '[label] sha256:<hex> "
         "[clients=foo,bar-*]': a token for every client, or only for those named (* any characters); "
         "re-read on SIGHUP."],
        ["peers", None, "", "Peers as id:token:url,... (url: the peer's tunnel URL; prefer --peers-file)."],
        ["peers-file", None, None, "File of peers, one id:token:url a line (keeps their tokens out of ps)."],
        ["peer-ca-file", None, None, "PEM CA certificates to verify wss:// peer URLs with."],
        ["peer-proxy", None, None,
         "HTTP proxy for the links to peers, http://[user:password@]host:port (hosts in $NO_PROXY go "
         "direct); '' for none.  Default: $HTTPS_PROXY/$HTTP_PROXY/$NO_PROXY, as Go reads them."],
        ["target-ca-file", None, None,
         "PEM CA certificates to verify the front door's https targets with (default: system trust store)."],
        ["ping-interval", None, PING_INTERVAL,
         "Seconds between the keepalive pings of our peer links (Go: 5).", float],
        ["idle-timeout", None, IDLE_TIMEOUT,
         "Seconds of silence after which a tunnel or peer link is dead (Go: 60).", float],
        *peers_dns.PARAMETERS,
        ["drain-timeout", None, DRAIN_TIMEOUT,
         "On SIGTERM, seconds the streams in flight get to finish before the sessions close.", float],
        *limit_parameters(upgrade=True),
        *frontdoor_tuning.PARAMETERS,
        *fleet.PARAMETERS,
    ]
    optFlags = [
        ["debug", "d", "Log every tunnel message."],
        ["target-insecure", None, "Do not verify the front door's https targets (self-signed clusters)."],
        ["insecure-any-client", None,
         "Accept any client that sends an X-Tunnel-ID, with no credential (Go's example server)."],
        ["frontdoor-open", None, "Answer front-door callers from any address, unauthenticated."],
        ["forward-credentials", None,
         "Pass the front-door caller's Authorization and Cookie headers on to targets."],
        ["no-http2", None,
         "Offer HTTP/1.1 only on TLS listeners (ALPN), not HTTP/2: twisted.web's HTTP/2 keeps writing "
         "a response for a caller that stops reading while its flow-control window lasts (see SECURITY.md)."],
        *frontdoor_tuning.FLAGS,
    ]

    def postOptions(self) -> None:

        check_listen("listen", self["listen"])
        try:
            # Only peer links ping: without peers the interval just has to be sane.
            pinging = self["peers"] or self["peers-file"] or self["peers-dns"]
            check_keepalive(self["ping-interval"] if pinging else None, self["idle-timeout"])
            if not self["ping-interval"] > 0:
                raise ValueError(f"ping interval must be over 0 s, not {self['ping-interval']}")
        except ValueError as e:
            raise usage.UsageError(f"--ping-interval/--idle-timeout: {e}") from None
        parse_limits(self, upgrade=True)
        frontdoor_tuning.check(self)
        if not self["drain-timeout"] >= 0:
            raise usage.UsageError(f"--drain-timeout must be 0 or more seconds, not {self['drain-timeout']}")
        self._parse_auth()
        fleet.check(self)
        parse_forwarders(self)
        self["peer_list"] = parse_peers(self["peers"])
        for peer_id, _, _ in self["peer_list"]:
            if peer_id == self["id"] or "/" in peer_id:
                raise usage.UsageError(f"--peers: {peer_id!r} is this server's own id, or has a '/'")
        if self["peers-file"]:
            try:
                with open(self["peers-file"], encoding="utf-8") as f:
                    lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            except OSError as e:
                raise usage.UsageError(f"--peers-file: {printable(str(e))}") from None
            self["peer_list"] += parse_peers(",".join(lines))
        peers_dns.check(self)
        if self["peer_list"] and not (self["id"] and self["token"]):
            raise usage.UsageError(
                "--peers needs --id and a peer token (--token-file, or $REMOTEDIALER_PEER_TOKEN)")
        self["peer_proxy_rule"] = ProxyRule()
        if self["peer_list"] or self["peers-dns"]:
            try:
                self["peer_proxy_rule"] = proxy_rule(self["peer-proxy"], source="--peer-proxy")
            except ValueError as e:
                hint = " (--peer-proxy overrides the environment)" if self["peer-proxy"] is None else ""
                raise usage.UsageError(f"{e}{hint}") from None
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

    def _parse_auth(self) -> None:
        """Client authentication, TLS listener, front-door access and the peer token."""
        try:
            self["token"] = self["token"] or secret_from(self["token-file"], PEER_TOKEN_ENV)
        except (OSError, ValueError) as e:
            raise usage.UsageError(f"--token-file: {e}") from None
        methods = [bool(self["clients-file"]), bool(self["client-ca-file"]),
                   bool(self["insecure-any-client"])]
        if sum(methods) > 1:
            raise usage.UsageError("choose one of --clients-file, --client-ca-file, --insecure-any-client")
        if not any(methods):
            raise usage.UsageError(_NO_AUTH)
        self["authorizer"] = None
        if self["clients-file"]:
            try:
                self["authorizer"] = TokenAuthorizer(self["clients-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--clients-file: {e}") from None
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["client-ca-file"] and not self["tls-cert"]:
            raise usage.UsageError("--client-ca-file needs --tls-cert and --tls-key (our TLS listener)")
        self["tls_options"] = None
        if self["tls-cert"]:
            if not self["listen"].startswith(("tcp:", "haproxy:tcp:")):
                raise usage.UsageError("--tls-cert/--tls-key make a TLS listener on a tcp: --listen")
            cert, key, cas = self["tls-cert"], self["tls-key"], self["client-ca-file"]
            self["tls_options"] = _ReloadableTLS(lambda: _tls_options(cert, key, cas))
            if self["client-ca-file"]:
                self["authorizer"] = CertificateAuthorizer()
        try:
            tokens_file = self["frontdoor-tokens-file"]
            hashes = TokenFile(tokens_file) if tokens_file else None
        except (OSError, ValueError) as e:
            raise usage.UsageError(f"--frontdoor-tokens-file: {e}") from None
        if self["frontdoor-listen"]:
            check_listen("frontdoor-listen", self["frontdoor-listen"])
        # The server's own listeners, as described (the forwarders' join in
        # parse_forwarders); each joins again with what it binds.
        own = OwnListeners(*this_host())
        for description in (self["listen"], self["frontdoor-listen"], self.get("admin_listen")):
            if description:
                plan(own, description)
        self["frontdoor_access"] = FrontDoorAccess(
            token_hashes=hashes, open=bool(self["frontdoor-open"]),
            forward_credentials=bool(self["forward-credentials"]), own=own)


def _tls_options(cert_path: str, key_path: str, ca_path: str | None) -> CertificateOptions:
    """Our TLS listener's options; with C{ca_path}, client certificates from those CAs are required."""
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
        private = PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:
        raise usage.UsageError(f"--tls-cert/--tls-key: {printable(str(e))}") from None
    if ca_path is None:
        return CertificateOptions(privateKey=private.privateKey.original, certificate=private.original)
    marker = b"-----BEGIN CERTIFICATE-----"
    try:
        with open(ca_path, "rb") as f:
            pem = f.read()
        cas = [Certificate.loadPEM(marker + part).original for part in pem.split(marker)[1:]]
        if not cas:
            raise ValueError("no PEM certificate in it")
    except Exception as e:
        raise usage.UsageError(f"--client-ca-file {ca_path!r}: {printable(str(e))}") from None
    return CertificateOptions(privateKey=private.privateKey.original, certificate=private.original,
                              verify=True, caCerts=cas, requireCertificate=True)


def _warning_authorizer(request: IRequest) -> str | None:
    """Go's example authorizer (any X-Tunnel-ID), saying so for every new client."""
    key = header_authorizer(request)
    if key:
        log.warn("--insecure-any-client: accepting client {key} without any credential", key=printable(key))
    return key


@implementer(IOpenSSLServerConnectionCreator)
class _ReloadableTLS:
    """Our TLS listener's options, which SIGHUP may replace (new connections use the new ones)."""

    def __init__(self, load: Callable[[], CertificateOptions]) -> None:
        self._load = load
        self._options = load()

    def reload(self) -> None:
        self._options = self._load()

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self._options.serverConnectionForTLS(tlsProtocol)


class _ReloadOnHangup(Service):
    """
    On SIGHUP re-reads the clients file, the front-door tokens file and the
    TLS listener's certificate, key and client CAs; one that fails to load
    is logged and the old one stays.
    """

    def __init__(self, authorizer: TokenAuthorizer | None, tls: _ReloadableTLS | None,
                 frontdoor_tokens: TokenFile | None = None) -> None:
        self._authorizer = authorizer
        self._tls = tls
        self._frontdoor_tokens = frontdoor_tokens
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's: mypy#16653
        from twisted.internet import reactor

        def hangup(signum: int, frame: object) -> None:
            reactor.callFromThread(self.reload)  # type: ignore[attr-defined]  # the global reactor has it

        self._previous = signal.signal(signal.SIGHUP, hangup)

    def stopService(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        return super().stopService()  # type: ignore[no-untyped-call,no-any-return]  # Twisted's

    def reload(self) -> None:
        if self._authorizer is not None:
            _reload_file("clients", self._authorizer, "clients")
        if self._frontdoor_tokens is not None:
            _reload_file("front-door tokens", self._frontdoor_tokens, "tokens")
        if self._tls is not None:
            try:
                self._tls.reload()
            except usage.UsageError as e:
                log.warn("SIGHUP: TLS certificate not reloaded, keeping the previous one: {error}",
                         error=printable(str(e)))
            else:
                log.info("SIGHUP: TLS certificate reloaded")


def _reload_file(what: str, source: TokenAuthorizer | TokenFile, items: str) -> None:
    """Re-read one of the files SIGHUP re-reads; one that fails to load is logged, the old one kept."""
    try:
        count = source.reload()
    except (OSError, ValueError) as e:
        log.warn("SIGHUP: {what} file not reloaded, keeping the previous one: {error}",
                 what=what, error=printable(str(e)))
    else:
        log.info("SIGHUP: {what} file {path} reloaded: {count} {items}",
                 what=what, path=source.path, count=count, items=items)


class ServerProgram(DrainOnStop):
    """
    The program's service: the listening site and the L{Server}, with both
    the server and its front door at hand (tests reach them).
    """

    server: Server
    front_door: FrontDoor
    #: The counters of every forwarder listener (--forward, --connect-proxy-listen, --socks-listen).
    forwarders: list[ForwarderStats]
    admin: AdminEndpoint | None

    def startService(self) -> None:
        frontdoor_tuning.tune_gc()
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653

    def stopService(self) -> Any:
        # Idle kept-alive front-door connections are open streams: the
        # drain would wait for them.  (The 503s of the drain make no new ones.)
        self.front_door.pools.close()
        return super().stopService()


def makeService(options: Options) -> ServerProgram:
    authorizer = options["authorizer"]
    if options["insecure-any-client"]:
        log.warn("--insecure-any-client: any client may claim any client key (no credential checked)")
        authorizer = _warning_authorizer
    from twisted.internet import reactor

    server = Server(authorizer, trace=data_debug(options["debug"]),
                    auth_limiter=fleet.limiter(options, reactor), trusted_proxies=options["trusted_proxies"],
                    peer_id=options["id"], peer_token=options["token"],
                    peer_trust_root=options["peer_trust_root"], peer_proxy=options["peer_proxy_rule"],
                    ping_interval=options["ping-interval"], idle_timeout=options["idle-timeout"],
                    session_limits=options["session_limits"], flow_limits=options["flow_limits"])
    for peer_id, token, url in options["peer_list"]:
        server.add_peer(peer_id, token, url)
    peers_dns.service(options, server)
    if options["target-insecure"]:
        log.warn("--target-insecure: https targets of the front door are not verified; "
                 "anyone on the path to them can impersonate them")
    root = Resource()
    root.putChild(b"connect", server.resource)
    upgrade = options["upgrade_limits"]
    access = options["frontdoor_access"]
    if access.open:
        log.warn("--frontdoor-open: anyone who reaches the front door can reach every client's network")
    front_door = FrontDoor(server, tls_policy=options["target_tls_policy"],
                           response_head_bytes=upgrade.header_bytes, response_headers=upgrade.max_headers,
                           access=access, **frontdoor_tuning.front_door_options(options))
    top = ServerProgram()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
    # A request with a body for an unknown client answered before its body
    # is read, only where anyone may use the front door anyway: the early
    # answer comes before the access rule, and would tell strangers (or a
    # token scoped to other clients) which clients are connected.
    early = refuse_unknown_client(server) if access.open and access.token_hashes is None else None
    if options["frontdoor-listen"]:
        front_root = Resource()
        front_root.putChild(b"client", DrainGate(front_door, server))
        front_site = HeaderGuardFactory(ServerSite(front_root, options["access-log"], STREAMED), upgrade,
                                        early=early, name="front door",
                                        alpn=HTTP_1_1_ONLY if options["no-http2"] else None)
        Listening("frontdoor-listen", options["frontdoor-listen"], front_site,
                  own=access.own, backlog=options["backlog"]).setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
    else:
        root.putChild(b"client", DrainGate(front_door, server))
    # On TLS, ALPN offers what the listener serves: h2 and http/1.1 with the
    # front door; the tunnel alone (a WebSocket upgrade) is HTTP/1.1 only.
    site: Any = HeaderGuardFactory(ServerSite(root, options["access-log"], STREAMED), upgrade, early=early,
                                   name="tunnel listener",
                                   alpn=HTTP_1_1_ONLY if options["frontdoor-listen"] or options["no-http2"]
                                   else None)
    if options["tls_options"] is not None:
        site = TLSMemoryBIOFactory(options["tls_options"], False, site)
    Listening("listen", options["listen"], site, own=access.own,
              backlog=options["backlog"]).setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
    for description in options["also_listen"]:
        Listening("also-listen", description, site, own=access.own,
                  backlog=options["backlog"]).setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
    tokens = options["authorizer"] if isinstance(options["authorizer"], TokenAuthorizer) else None
    frontdoor_tokens = access.token_hashes if isinstance(access.token_hashes, TokenFile) else None
    if tokens is not None or options["tls_options"] is not None or frontdoor_tokens is not None:
        reloader = _ReloadOnHangup(tokens, options["tls_options"], frontdoor_tokens)
        reloader.setServiceParent(top)  # type: ignore[no-untyped-call]
    server.setServiceParent(top)  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16651
    top.server = server
    top.front_door = front_door
    top.drain_timeout = options["drain-timeout"]
    top.forwarders = add_forwarders(top, server, options)
    top.admin = serve_server_admin(top, options, server, site, top.forwarders)
    return top
