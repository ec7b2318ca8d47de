"""
``twistd remotedialer-client``: the Go example client's flags, plus what a
production client needs (extra headers, a dial allow-list, a CA file).

Unlike Go's example client, which dials anything, the server may dial only
what an --allow rule allows (remotedialer.client._acl); with no --allow it may dial
nothing, and --allow-any restores Go's behaviour.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.ssl import PrivateCertificate
from twisted.logger import Logger
from twisted.python import usage

from remotedialer._tap._admin import AdminOptions, serve_client_admin
from remotedialer._tap._common import (
    VersionOption,
    data_debug,
    flags_named_in_errors,
    limit_parameters,
    load_ca_file,
    parse_limits,
)
from remotedialer._tap._fleet import BACKLOG_PARAMETER
from remotedialer._tap._headers import read_header_file
from remotedialer._tap._listen import check_backlog
from remotedialer._tap._logging import LogFormatOption
from remotedialer.client._acl import parse_rule
from remotedialer.client._client import RETRY_MAX, TunnelClient, endpoint_for_url, reconnect_policy
from remotedialer.client._dialer import ConnectAuthorizer, allow_all, allow_patterns, deny_all
from remotedialer.client._proxyrule import proxy_rule
from remotedialer.protocol._text import printable
from remotedialer.server._auth import secret_from
from remotedialer.tunnel._websocket import IDLE_TIMEOUT, PING_INTERVAL, check_keepalive

DEFAULT_CONNECT = "ws://127.0.0.1:8123/connect"
#: Where the client's token may come from instead of --token-file.
TOKEN_ENV = "REMOTEDIALER_TOKEN"
log = Logger()


@flags_named_in_errors
class Options(VersionOption, LogFormatOption, AdminOptions, usage.Options):
    synopsis = (
        "[--connect URL] [--id ID] [--header 'Name: value' ...] [--allow RULE ... | --allow-any] "
        "[--ca-file PEM] [--header-file FILE] [--proxy URL] [--log-format json] [--debug]"
    )
    optParameters = [
        ["connect", "c", DEFAULT_CONNECT,
         "Tunnel URL of the server (ws:// or wss://); several, comma-separated, for failover."],
        ["id", "i", "foo", "Client key, sent as X-Tunnel-ID."],
        ["ca-file", None, None, "PEM file of CA certificates to verify a wss:// server with."],
        ["cert", None, None,
         "PEM file with this client's certificate and key (or --key), for a server using mutual TLS."],
        ["key", None, None, "PEM private key of --cert, if not in the same file."],
        ["token-file", None, None,
         "File holding this client's token, sent as 'Authorization: Bearer' (or $REMOTEDIALER_TOKEN)."],
        ["ping-interval", None, PING_INTERVAL, "Seconds between keepalive pings (Go: 5).", float],
        ["idle-timeout", None, IDLE_TIMEOUT,
         "Seconds of silence after which the tunnel is dead and redialed (Go: 60).", float],
        ["proxy", None, None,
         "HTTP proxy to reach the server through, http://[user:password@]host:port, instead of "
         "$HTTPS_PROXY (wss://) / $HTTP_PROXY (ws://); hosts in $NO_PROXY still go direct; '' dials "
         "direct whatever the environment says.  Default: the environment, as Go reads it."],
        ["header-file", None, None,
         "File of extra upgrade headers, one 'Name: value' a line (keeps secret headers out of ps)."],
        ["reconnect-max", None, RETRY_MAX,
         "Longest wait, seconds, between reconnect attempts (exponential backoff with jitter, "
         "the first within 1 s).", float],
        *limit_parameters(),
        BACKLOG_PARAMETER,
    ]
    optFlags = [
        ["debug", "d", "Log every tunnel message."],
        ["allow-any", None,
         "Let the server dial any target this host can reach (Go's example client; not for production)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self["headers"] = {}
        self["allow"] = []

    def opt_header(self, value: str) -> None:
        """Extra upgrade header 'Name: value' (repeatable)."""
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise usage.UsageError(f"--header {value!r} is not 'Name: value'")
        self["headers"][name.strip()] = text.strip()

    def opt_allow(self, pattern: str) -> None:
        # The docstring is the --allow help, kept one line (a multi-line
        # docstring's indentation would show in it): one literal in parts.
        (
            "Allow the server to dial proto/host:port (repeatable; default: nothing): "
            "host an address, a CIDR range (10.0.0.0/8), [IPv6] or [IPv6/len], a host name or "
            "*.domain (its addresses are checked too; loopback or link-local ones need an address "
            "rule); port N, N,M, N-M or *; also unix//path. "
            "E.g. tcp/127.0.0.1:*, tcp/[::1]:80,443, tcp/*.svc.cluster.local:8000-8100."
        )
        if pattern.strip() in ("*", "*/*", "*/*:*"):
            raise usage.UsageError(
                f"--allow {pattern!r}: patterns are no longer globs; use --allow-any to allow every target")
        try:
            parse_rule(pattern)
        except ValueError as e:
            raise usage.UsageError(f"--allow {pattern!r}: {e}") from None
        self["allow"].append(pattern)

    def postOptions(self) -> None:
        try:
            token = secret_from(self["token-file"], TOKEN_ENV)
        except (OSError, ValueError) as e:
            raise usage.UsageError(f"--token-file: {e}") from None
        self["token_header"] = {"Authorization": f"Bearer {token}"} if token else {}
        if self["header-file"]:
            self["headers"] = {**read_header_file(self["header-file"]), **self["headers"]}
        if not self["reconnect-max"] > 0:
            raise usage.UsageError(f"--reconnect-max must be over 0 s, not {self['reconnect-max']}")
        from twisted.internet import reactor

        if self["allow-any"] and self["allow"]:
            raise usage.UsageError("--allow-any and --allow exclude each other")
        if not self["id"] or "/" in self["id"]:
            raise usage.UsageError("--id must be non-empty and without '/'")
        try:
            check_keepalive(self["ping-interval"], self["idle-timeout"])
        except ValueError as e:
            raise usage.UsageError(f"--ping-interval/--idle-timeout: {e}") from None
        parse_limits(self)
        check_backlog(self)
        self["trust_root"] = None
        if self["ca-file"]:
            self["trust_root"] = load_ca_file("ca-file", self["ca-file"])
        self["client_certificate"] = None
        if self["key"] and not self["cert"]:
            raise usage.UsageError("--key needs --cert")
        if self["cert"]:
            try:
                pem = b""
                for path in filter(None, (self["cert"], self["key"])):
                    with open(path, "rb") as f:
                        pem += f.read() + b"\n"
                self["client_certificate"] = PrivateCertificate.loadPEM(pem)
            except Exception as e:
                raise usage.UsageError(f"--cert/--key: {printable(str(e)) or type(e).__name__}") from None
        try:
            self["proxy_rule"] = proxy_rule(self["proxy"], source="--proxy")
        except ValueError as e:
            hint = " (--proxy overrides the environment)" if self["proxy"] is None else ""
            raise usage.UsageError(f"{e}{hint}") from None
        self["urls"] = [u.strip() for u in self["connect"].split(",") if u.strip()]
        if not self["urls"]:
            raise usage.UsageError("--connect needs a URL")
        for url in self["urls"]:
            try:
                endpoint_for_url(reactor, url)
            except ValueError as e:
                raise usage.UsageError(f"--connect: {e}") from None


def makeService(options: Options) -> IService:
    """The client; with --admin-listen, a service of the client and its admin endpoint."""
    authorizer: ConnectAuthorizer
    if options["allow"]:
        authorizer = allow_patterns(options["allow"])
    elif options["allow-any"]:
        log.warn("--allow-any: the server may dial any target this host can reach")
        authorizer = allow_all
    else:
        log.warn("no --allow given: the server may dial nothing; "
                 "add --allow tcp/HOST:PORT (e.g. --allow tcp/127.0.0.1:8080) for each target")
        authorizer = deny_all
    client = TunnelClient(
        options["urls"],
        headers={"X-Tunnel-ID": options["id"], **options["token_header"], **options["headers"]},
        connect_authorizer=authorizer,
        trust_root=options["trust_root"],
        client_certificate=options["client_certificate"],
        trace=data_debug(options["debug"]),
        client_key=options["id"],
        ping_interval=options["ping-interval"],
        idle_timeout=options["idle-timeout"],
        session_limits=options["session_limits"],
        flow_limits=options["flow_limits"],
        retry_policy=reconnect_policy(options["reconnect-max"]),
        proxy=options["proxy_rule"],
    )
    return serve_client_admin(client, options)
