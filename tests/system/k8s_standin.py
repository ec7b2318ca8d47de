"""A stand-in Kubernetes API server, written with Twisted, for system tests.

Point the real ``kubectl`` at it (HTTPS, its own CA, a bearer token) and it
answers enough of the API for::

    kubectl version
    kubectl get pods / kubectl get pod demo -o yaml
    kubectl logs [-f] demo
    kubectl exec demo -- echo hi            (and -i, -t, stderr, exit codes)
    kubectl attach [-i] demo
    kubectl port-forward pod/demo LOCAL:REMOTE

Streaming protocols implemented (server side):

* exec / attach: WebSocket subprotocols ``v5.channel.k8s.io`` (what kubectl
  >= 1.30 uses) and ``v4.channel.k8s.io``; channel byte 0 stdin, 1 stdout,
  2 stderr, 3 error/status JSON, 4 resize, 255 close (v5 only).  The legacy
  SPDY upgrade (``Upgrade: SPDY/3.1``, ``X-Stream-Protocol-Version:
  v4.channel.k8s.io``) that kubectl falls back to is implemented as well.
* port-forward: SPDY/3.1 tunnelled through a WebSocket (subprotocol
  ``SPDY/3.1+portforward.k8s.io``, what kubectl >= 1.31 uses), and the plain
  ``Upgrade: SPDY/3.1`` + ``X-Stream-Protocol-Version: portforward.k8s.io``
  fallback.  Each forwarded connection (an error stream plus a data stream)
  is connected to a local TCP target given to the stand-in.

Fake commands understood by exec (the "pod" has no real processes):

==========================  ==================================================
``echo [-n] ARGS``          ARGS to stdout
``stderr ARGS``             ARGS to stderr (shortcut)
``cat``                     copies stdin to stdout until stdin is closed
``exit N`` / ``true`` /     exit code N / 0 / 1
``false``
``sleep SECONDS``           waits
``hostname`` / ``pwd``      the pod name / ``/``
``sh -c 'SCRIPT'``          SCRIPT is simple commands joined by ``;``, ``&&``
                            or ``||``; ``>&2`` / ``1>&2`` sends a command's
                            stdout to stderr, e.g.
                            ``sh -c 'echo out; echo err >&2; exit 3'``
anything else               ``sh: NAME: not found`` on stderr, exit code 127
==========================  ==================================================

A non-zero exit code is reported as the kubelet does it: a ``Failure`` status
with reason ``NonZeroExitCode`` and a cause ``{"reason": "ExitCode",
"message": "N"}``, so ``kubectl exec`` prints ``command terminated with exit
code N`` and exits with N.

``attach`` with stdin echoes stdin to stdout until stdin is closed; without
stdin it writes ``attach_lines`` lines (``attach line 1`` ...), one every
``log_interval`` seconds, then ends successfully (as if the process exited).

With ``-t`` (``tty=true``) the fake process waits for kubectl's first
terminal size (at most a second), writes ``\r\n`` line ends, echoes input,
maps CR to NL, ends stdin at ``^D`` and exits 130 at ``^C``, roughly as a pty
would.  The pod's container does not ask for a TTY, so ``kubectl attach -t``
says "Unable to use a TTY" and attaches without one, as against a real pod.

``logs`` writes ``log_lines`` lines ``<pod> log line N``; with ``follow=true``
it writes one such line every ``log_interval`` seconds until the client goes
away.

Every request is recorded (``StandinAPI.records``, and as JSON lines in a
file when one is given): method, path, query, all headers (so the
``Authorization`` header and the upgrade headers), the TLS client
certificate's subject and SHA-256 fingerprint, the ALPN protocol, the HTTP
version, the status, the negotiated streaming protocol and events (exec
command and exit code, resizes, port-forward streams).

Use, in a trial test::

    server = StandinServer(self.mktemp(), forward_target=("127.0.0.1", port))
    yield server.start()              # listens on 127.0.0.1, any free port
    self.addCleanup(server.stop)
    # run kubectl with KUBECONFIG=server.kubeconfig (token, CA already in it)
    rec = yield server.api.wait_for_record(lambda r: r.kind == "exec" and r.finished)
    assert rec.authorization == "Bearer standin-token"

or as a program: ``python k8s_standin.py --dir DIR --port PORT
[--forward-target 127.0.0.1:NNNN] [--http1-only] [--no-websocket]``, which
prints ``READY url=... port=... kubeconfig=... records=...`` once listening.

Dependencies: Twisted (with ``tls`` and ``http2`` extras), Autobahn,
``cryptography`` and the standard library.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import itertools
import json
import os
import shlex
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

__all__ = [
    "PKIFiles",
    "make_pki",
    "write_kubeconfig",
    "RequestRecord",
    "StandinAPI",
    "make_site",
    "make_tls_options",
    "StandinServer",
    "SpdySession",
    "SpdyStream",
    "main",
]

DEFAULT_TOKEN = "standin-token"
_log = Logger(namespace="k8s_standin")

# Subprotocol / header names (k8s.io/apimachinery/pkg/util/remotecommand,
# .../util/portforward, .../util/httpstream/wsstream).
WS_CHANNEL_V5 = "v5.channel.k8s.io"
WS_CHANNEL_V4 = "v4.channel.k8s.io"
WS_PORTFORWARD_TUNNEL = "SPDY/3.1+portforward.k8s.io"
SPDY_PORTFORWARD = "portforward.k8s.io"
SPDY_EXEC_PROTOCOLS = (
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)

STREAM_STDIN, STREAM_STDOUT, STREAM_STDERR, STREAM_ERROR, STREAM_RESIZE = 0, 1, 2, 3, 4
STREAM_CLOSE = 255


# --------------------------------------------------------------------------
# PKI and kubeconfig
# --------------------------------------------------------------------------


@dataclass
class PKIFiles:
    """Paths of the PEM files written by :func:`make_pki`."""

    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _write_pem(path: str, data: bytes, private: bool = False) -> None:
    with open(path, "wb") as f:
        f.write(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(
    directory: str,
    *,
    dns_names: Iterable[str] = ("kubernetes", "localhost"),
    ip_addresses: Iterable[str] = ("127.0.0.1",),
    client_common_name: str = "standin-client",
    client_organization: str = "system:masters",
    ca_common_name: str = "k8s-standin-ca",
    days: int = 30,
    prefix: str = "",
) -> PKIFiles:
    """Make a private CA, a server certificate and a client certificate.

    Writes ``{prefix}ca.crt``, ``ca.key``, ``server.crt``, ``server.key``,
    ``client.crt`` and ``client.key`` (PEM, ECDSA P-256) into *directory*
    (created if needed).  The server certificate has SANs DNS ``kubernetes``
    and ``localhost`` and IP ``127.0.0.1`` by default; the client certificate
    (CN *client_common_name*, O *client_organization*) is signed by the same
    CA, so the stand-in accepts it as a credential.
    """
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)

    def leaf(subject: x509.Name, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(aki, critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    first_dns = next(iter(dns_names), "kubernetes")
    server_key, server_cert = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first_dns)]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
    )
    client_subject = [x509.NameAttribute(NameOID.COMMON_NAME, client_common_name)]
    if client_organization:
        client_subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, client_organization))
    client_key, client_cert = leaf(x509.Name(client_subject), ExtendedKeyUsageOID.CLIENT_AUTH)

    def p(name: str) -> str:
        return os.path.join(directory, prefix + name)

    pem = serialization.Encoding.PEM
    _write_pem(p("ca.crt"), ca_cert.public_bytes(pem))
    _write_pem(p("ca.key"), _key_pem(ca_key), private=True)
    _write_pem(p("server.crt"), server_cert.public_bytes(pem))
    _write_pem(p("server.key"), _key_pem(server_key), private=True)
    _write_pem(p("client.crt"), client_cert.public_bytes(pem))
    _write_pem(p("client.key"), _key_pem(client_key), private=True)
    return PKIFiles(
        directory=directory,
        ca_cert=p("ca.crt"),
        ca_key=p("ca.key"),
        server_cert=p("server.crt"),
        server_key=p("server.key"),
        client_cert=p("client.crt"),
        client_key=p("client.key"),
    )


def _yaml_str(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(value)


def write_kubeconfig(
    path: str,
    server: str,
    ca_file: str | None = None,
    token: str | None = DEFAULT_TOKEN,
    *,
    proxy_url: str | None = None,
    tls_server_name: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    insecure_skip_tls_verify: bool = False,
    namespace: str = "default",
    name: str = "standin",
) -> str:
    """Write a kubeconfig with one cluster/user/context named *name*.

    *server* is the API server URL (``https://127.0.0.1:PORT``); *ca_file*
    the CA bundle kubectl verifies it with; *token* the bearer token (None:
    no token); *proxy_url* becomes the cluster's ``proxy-url`` (http, https
    or socks5 URL); *tls_server_name* the cluster's ``tls-server-name`` (use
    ``kubernetes`` when *server* names a host the certificate does not
    cover); *client_cert*/*client_key* a client certificate.  Returns *path*.
    """
    cluster = [f"    server: {_yaml_str(server)}"]
    if ca_file:
        cluster.append(f"    certificate-authority: {_yaml_str(os.path.abspath(ca_file))}")
    if insecure_skip_tls_verify:
        cluster.append("    insecure-skip-tls-verify: true")
    if proxy_url:
        cluster.append(f"    proxy-url: {_yaml_str(proxy_url)}")
    if tls_server_name:
        cluster.append(f"    tls-server-name: {_yaml_str(tls_server_name)}")
    user: list[str] = []
    if token is not None:
        user.append(f"    token: {_yaml_str(token)}")
    if client_cert:
        user.append(f"    client-certificate: {_yaml_str(os.path.abspath(client_cert))}")
    if client_key:
        user.append(f"    client-key: {_yaml_str(os.path.abspath(client_key))}")
    if not user:
        user = ["    {}"]
        user_block = "  user: {}"
    else:
        user_block = "  user:\n" + "\n".join(user)
    text = "\n".join(
        [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            f"- name: {_yaml_str(name)}",
            "  cluster:",
            *cluster,
            "users:",
            f"- name: {_yaml_str(name)}",
            user_block,
            "contexts:",
            f"- name: {_yaml_str(name)}",
            "  context:",
            f"    cluster: {_yaml_str(name)}",
            f"    user: {_yaml_str(name)}",
            f"    namespace: {_yaml_str(namespace)}",
            f"current-context: {_yaml_str(name)}",
            "preferences: {}",
            "",
        ]
    )
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------
# Request records
# --------------------------------------------------------------------------

UPGRADE_HEADERS = ("upgrade", "connection", "sec-websocket-protocol", "x-stream-protocol-version")


@dataclass
class RequestRecord:
    """What the stand-in saw for one HTTP request."""

    id: int
    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]  # lower-case names
    http_version: str  # "HTTP/1.1" or "HTTP/2"
    alpn: str | None  # ALPN protocol negotiated on the TLS connection
    peer: str
    authorization: str | None
    client_cert_subject: str | None  # RFC 4514 subject of the TLS client cert
    client_cert_sha256: str | None  # hex fingerprint of the TLS client cert
    sni: str | None = None  # TLS server name the client sent
    authenticated: bool = False
    auth_method: str | None = None  # "token", "client-cert", "anonymous" or None
    kind: str = ""  # version, discovery, list, get, log, exec, attach, portforward, ...
    status: int | None = None
    upgrade: str | None = None  # "websocket" or "spdy" when the request was upgraded
    protocol: str | None = None  # negotiated subprotocol / X-Stream-Protocol-Version
    events: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False

    def header(self, name: str) -> str | None:
        """First value of header *name* (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return list(self.headers.get(name.lower(), []))

    @property
    def upgrade_headers(self) -> dict[str, list[str]]:
        """Upgrade, Connection, Sec-WebSocket-Protocol, X-Stream-Protocol-Version."""
        return {h: self.headers[h] for h in UPGRADE_HEADERS if h in self.headers}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------
# The fake cluster's objects
# --------------------------------------------------------------------------


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    st = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        st["details"] = details
    return st


_POD_RESOURCES = [
    {
        "name": "pods",
        "singularName": "pod",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "shortNames": ["po"],
        "categories": ["all"],
    },
    {
        "name": "pods/attach",
        "singularName": "",
        "namespaced": True,
        "kind": "PodAttachOptions",
        "verbs": ["create", "get"],
    },
    {
        "name": "pods/exec",
        "singularName": "",
        "namespaced": True,
        "kind": "PodExecOptions",
        "verbs": ["create", "get"],
    },
    {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
    {
        "name": "pods/portforward",
        "singularName": "",
        "namespaced": True,
        "kind": "PodPortForwardOptions",
        "verbs": ["create", "get"],
    },
    {
        "name": "pods/status",
        "singularName": "",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["get", "patch", "update"],
    },
    {
        "name": "namespaces",
        "singularName": "namespace",
        "namespaced": False,
        "kind": "Namespace",
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        "shortNames": ["ns"],
    },
]


# --------------------------------------------------------------------------
# SPDY/3.1 (the subset spdystream / kubectl uses)
# --------------------------------------------------------------------------

# The SPDY/3 header compression dictionary: length-prefixed words, then a tail.
_SPDY_DICT_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control "
    "connection content-base content-encoding content-language content-length "
    "content-location content-md5 content-range content-type date etag expect "
    "expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te "
    "trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status"
).split()
_SPDY_DICT_WORDS += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
_SPDY_DICT_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
SPDY_DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.encode() for w in _SPDY_DICT_WORDS) + _SPDY_DICT_TAIL.encode()
)
assert len(SPDY_DICTIONARY) == 1423 and zlib.adler32(SPDY_DICTIONARY) == 0xE3C6A7C2

SPDY_SYN_STREAM, SPDY_SYN_REPLY, SPDY_RST_STREAM, SPDY_SETTINGS = 1, 2, 3, 4
SPDY_PING, SPDY_GOAWAY, SPDY_HEADERS, SPDY_WINDOW_UPDATE = 6, 7, 8, 9
SPDY_FLAG_FIN, SPDY_FLAG_UNIDIRECTIONAL = 0x01, 0x02
SPDY_RST_PROTOCOL_ERROR, SPDY_RST_REFUSED_STREAM, SPDY_RST_CANCEL = 1, 3, 5
_SPDY_FRAME_NAMES = {
    1: "SYN_STREAM",
    2: "SYN_REPLY",
    3: "RST_STREAM",
    4: "SETTINGS",
    6: "PING",
    7: "GOAWAY",
    8: "HEADERS",
    9: "WINDOW_UPDATE",
}
_SPDY_MAX_CHUNK = 32 * 1024


class SpdyError(Exception):
    pass


class SpdyStream:
    """One SPDY stream opened by the client.

    The handler that receives it sets ``on_data(bytes)``, ``on_fin()`` and
    ``on_reset()`` and uses :meth:`write`, :meth:`close` (half-close: DATA
    with FIN) and :meth:`reset`.
    """

    def __init__(self, session: SpdySession, stream_id: int, headers: dict[str, str], fin: bool):
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.remote_closed = fin
        self.local_closed = False
        self.was_reset = False
        self.on_data: Callable[[bytes], None] | None = None
        self.on_fin: Callable[[], None] | None = None
        self.on_reset: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        if self.local_closed or self.was_reset or not data:
            return
        for i in range(0, len(data), _SPDY_MAX_CHUNK):
            self.session._send_data(self.id, data[i : i + _SPDY_MAX_CHUNK], False)

    def close(self) -> None:
        """Half-close: we will send no more data on this stream."""
        if self.local_closed or self.was_reset:
            return
        self.local_closed = True
        self.session._send_data(self.id, b"", True)
        self.session._maybe_forget(self)

    def reset(self, status: int = SPDY_RST_CANCEL) -> None:
        if self.was_reset:
            return
        self.was_reset = True
        self.local_closed = self.remote_closed = True
        self.session._send_rst(self.id, status)
        self.session._maybe_forget(self)


class SpdySession:
    """Server side of a SPDY/3.1 session, transport-agnostic.

    *send(bytes)* writes to the peer (a WebSocket binary message or a raw
    transport), *close()* drops the connection, *on_stream(SpdyStream)* is
    called for each SYN_STREAM after its SYN_REPLY has been sent.  Feed
    received bytes to :meth:`data_received`.  Client PINGs are echoed;
    SETTINGS, WINDOW_UPDATE and HEADERS are accepted and ignored (spdystream
    does no flow control).
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        on_stream: Callable[[SpdyStream], None],
        on_goaway: Callable[[], None] | None = None,
    ):
        self._send = send
        self._close = close
        self._on_stream = on_stream
        self._on_goaway = on_goaway
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=SPDY_DICTIONARY)
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, SPDY_DICTIONARY)
        self.streams: dict[int, SpdyStream] = {}
        self.frame_counts: dict[str, int] = {}
        self.closed = False
        self.last_stream_id = 0

    # -- input
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._buf += data
        while len(self._buf) >= 8 and not self.closed:
            length = int.from_bytes(self._buf[5:8], "big")
            if len(self._buf) < 8 + length:
                return
            frame = bytes(self._buf[: 8 + length])
            del self._buf[: 8 + length]
            try:
                self._frame(frame)
            except SpdyError:
                self.closed = True
                self._close()
                return

    def _count(self, name: str) -> None:
        self.frame_counts[name] = self.frame_counts.get(name, 0) + 1

    def _frame(self, frame: bytes) -> None:
        first, flags_len = struct.unpack(">II", frame[:8])
        flags = flags_len >> 24
        body = frame[8:]
        if not first & 0x80000000:
            self._count("DATA")
            stream = self.streams.get(first & 0x7FFFFFFF)
            if stream is None or stream.was_reset:
                return
            if body and stream.on_data is not None:
                self._call(stream, stream.on_data, body)
            if flags & SPDY_FLAG_FIN:
                stream.remote_closed = True
                if stream.on_fin is not None:
                    self._call(stream, stream.on_fin)
                self._maybe_forget(stream)
            return
        version = (first >> 16) & 0x7FFF
        ftype = first & 0xFFFF
        self._count(_SPDY_FRAME_NAMES.get(ftype, f"type{ftype}"))
        if version != 3:
            raise SpdyError(f"unsupported SPDY version {version}")
        if ftype == SPDY_SYN_STREAM:
            sid = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
            headers = self._parse_headers(body[10:])
            if sid == 0 or sid % 2 == 0 or sid <= self.last_stream_id:
                self._send_rst(sid, SPDY_RST_PROTOCOL_ERROR)
                return
            self.last_stream_id = sid
            stream = SpdyStream(self, sid, headers, bool(flags & SPDY_FLAG_FIN))
            if flags & SPDY_FLAG_UNIDIRECTIONAL:
                stream.local_closed = True
            self.streams[sid] = stream
            # The reply must precede any DATA: spdystream drops data on unreplied streams.
            self._send_control(SPDY_SYN_REPLY, 0, struct.pack(">I", sid) + self._encode_headers({}))
            self._call(stream, self._on_stream, stream)
        elif ftype == SPDY_SYN_REPLY:
            self._parse_headers(body[4:])  # keep the zlib stream in step
        elif ftype == SPDY_HEADERS:
            self._parse_headers(body[4:])
        elif ftype == SPDY_RST_STREAM:
            sid = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
            stream = self.streams.pop(sid, None)
            if stream is not None and not stream.was_reset:
                stream.was_reset = True
                stream.remote_closed = stream.local_closed = True
                if stream.on_reset is not None:
                    self._call(stream, stream.on_reset)
        elif ftype == SPDY_PING:
            (pid,) = struct.unpack(">I", body[:4])
            if pid % 2 == 1:  # client-initiated: echo it
                self._send(frame)
        elif ftype == SPDY_GOAWAY:
            if self._on_goaway is not None:
                self._on_goaway()
        # SETTINGS, WINDOW_UPDATE, anything else: ignored

    def _call(self, stream: SpdyStream, fn: Callable, *args) -> None:
        """Run a handler callback; a failing handler resets its stream only."""
        try:
            fn(*args)
        except Exception:
            _log.failure("SPDY stream {id} handler failed", id=stream.id)
            stream.reset(SPDY_RST_CANCEL)

    def _parse_headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)
        (n,) = struct.unpack(">I", raw[:4])
        pos = 4
        headers: dict[str, str] = {}
        for _ in range(n):
            (ln,) = struct.unpack(">I", raw[pos : pos + 4])
            name = raw[pos + 4 : pos + 4 + ln].decode("latin-1").lower()
            pos += 4 + ln
            (lv,) = struct.unpack(">I", raw[pos : pos + 4])
            value = raw[pos + 4 : pos + 4 + lv].decode("latin-1")
            pos += 4 + lv
            headers[name] = value.split("\x00")[0]
        return headers

    # -- output
    def _encode_headers(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for k, v in headers.items():
            kb, vb = k.lower().encode(), v.encode()
            raw += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def _send_control(self, ftype: int, flags: int, body: bytes) -> None:
        if self.closed:
            return
        self._send(struct.pack(">HHI", 0x8000 | 3, ftype, (flags << 24) | len(body)) + body)

    def _send_data(self, sid: int, data: bytes, fin: bool) -> None:
        if self.closed:
            return
        flags = SPDY_FLAG_FIN if fin else 0
        self._send(struct.pack(">II", sid & 0x7FFFFFFF, (flags << 24) | len(data)) + data)

    def _send_rst(self, sid: int, status: int) -> None:
        self._send_control(SPDY_RST_STREAM, 0, struct.pack(">II", sid, status))

    def goaway(self) -> None:
        self._send_control(SPDY_GOAWAY, 0, struct.pack(">II", self.last_stream_id, 0))

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if stream.was_reset or (stream.local_closed and stream.remote_closed):
            self.streams.pop(stream.id, None)

    def connection_lost(self) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            if not stream.was_reset:
                stream.was_reset = True
                if stream.on_reset is not None:
                    self._call(stream, stream.on_reset)
        self.streams.clear()


class _SpdyTransportProtocol(protocol.Protocol):
    """Runs a SpdySession directly on a transport taken over after a 101."""

    def __init__(
        self, make_session: Callable[[_SpdyTransportProtocol], SpdySession], on_lost: Callable[[], None]
    ):
        self._make_session = make_session
        self._on_lost = on_lost
        self.session: SpdySession | None = None

    def connectionMade(self) -> None:
        self.session = self._make_session(self)

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)

    def connectionLost(self, reason=None) -> None:
        if self.session is not None:
            self.session.connection_lost()
        self._on_lost()


# --------------------------------------------------------------------------
# Fake processes for exec / attach
# --------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _parse_script(script: str) -> list[tuple[str, list[str], bool]]:
    """Parse a tiny shell subset into [(connector, argv, stdout_to_stderr)]."""
    lex = shlex.shlex(script, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    commands: list[tuple[str, list[str], bool]] = []
    connector, argv, to_stderr = ";", [], False
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in (";", "&&", "||", "\n"):
            if argv:
                commands.append((connector, argv, to_stderr))
            connector, argv, to_stderr = t, [], False
        elif t in (">&", "1>&") and i + 1 < len(tokens):
            if tokens[i + 1] == "2":
                to_stderr = True
            i += 1
        elif t == "1" and i + 1 < len(tokens) and tokens[i + 1] == ">&":
            pass
        elif t == "2" and i + 2 < len(tokens) and tokens[i + 1] == ">&" and tokens[i + 2] == "1":
            i += 2
        else:
            argv.append(t)
        i += 1
    if argv:
        commands.append((connector, argv, to_stderr))
    return commands


class _FakeProcess:
    """Runs a fake command (see the module docstring) against an IO object.

    *io* has ``stdout(bytes)``, ``stderr(bytes)`` and ``exit(code)``; feed
    stdin with :meth:`stdin_data` / :meth:`stdin_closed`; :meth:`abort` when
    the client goes away.
    """

    def __init__(
        self, api: StandinAPI, io, argv: list[str] | None, *, stdin: bool, tty: bool, attach: bool = False
    ):
        self.api = api
        self.io = io
        self.argv = argv or []
        self.tty = tty
        self.attach = attach
        self._stdin = bytearray()
        self._stdin_eof = not stdin
        self._stdin_waiter: defer.Deferred | None = None
        self._pending: defer.Deferred | None = None
        self.aborted = False
        self.exit_code: int | None = None
        self._resize_waiter: defer.Deferred | None = None
        if tty:  # a pty turns "\n" into "\r\n" on output
            out, err = io.stdout, io.stderr
            self._out = lambda d: out(d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            self._err = lambda d: err(d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        else:
            self._out, self._err = io.stdout, io.stderr

    # stdin
    def stdin_data(self, data: bytes) -> None:
        if self._stdin_eof:
            return
        if self.tty:
            data = self._line_discipline(data)
            if not data and not self._stdin_eof:
                return
        self._stdin += data
        self._wake()

    def _line_discipline(self, data: bytes) -> bytes:
        """A sketch of a pty: CR -> NL, echo, ^D ends input, ^C interrupts."""
        out = bytearray()
        for b in data:
            if b == 0x04:  # ^D
                self._stdin_eof = True
                break
            if b == 0x03:  # ^C
                self.io.stdout(b"^C\r\n")
                self.abort()
                self.exit_code = 130
                self.io.exit(130)
                return b""
            out.append(0x0A if b == 0x0D else b)
        if out:
            self.io.stdout(bytes(out).replace(b"\n", b"\r\n"))
        return bytes(out)

    def resized(self, size: dict) -> None:
        w, self._resize_waiter = self._resize_waiter, None
        if w is not None and not w.called:
            w.callback(size)

    def stdin_closed(self) -> None:
        self._stdin_eof = True
        self._wake()

    def _wake(self) -> None:
        w, self._stdin_waiter = self._stdin_waiter, None
        if w is not None:
            data = bytes(self._stdin)
            self._stdin.clear()
            w.callback(data)

    def _read_stdin(self) -> defer.Deferred:
        if self._stdin or self._stdin_eof:
            data = bytes(self._stdin)
            self._stdin.clear()
            return defer.succeed(data)
        self._stdin_waiter = defer.Deferred()
        return self._stdin_waiter

    def _wait(self, d: defer.Deferred) -> defer.Deferred:
        self._pending = d
        return d

    def abort(self) -> None:
        self.aborted = True
        for d in (self._pending, self._stdin_waiter):
            if d is not None and not d.called:
                d.cancel()

    # running
    def start(self) -> defer.Deferred:
        d = self._main()
        d.addCallbacks(self._finished, self._failed)
        return d

    def _finished(self, code: int) -> None:
        if self.aborted:
            return
        self.exit_code = code
        self.io.exit(code)

    def _failed(self, failure) -> None:
        if self.aborted or failure.check(defer.CancelledError):
            return
        self.exit_code = 1
        self._err(f"standin: internal error: {failure.getErrorMessage()}\n".encode())
        self.io.exit(1)

    @defer.inlineCallbacks
    def _main(self):
        if self.tty:
            # kubectl sends the terminal size right after connecting; start
            # once it is there (as a shell would), or after a second.
            self._resize_waiter = defer.Deferred()
            timer = self.api.reactor.callLater(1.0, self.resized, None)
            yield self._wait(self._resize_waiter)
            if timer.active():
                timer.cancel()
        if self.attach:
            code = yield self._attach()
            return code
        try:
            code = yield self._run_argv(self.argv, False)
        except _Exit as e:
            code = e.code
        return code

    @defer.inlineCallbacks
    def _attach(self):
        if not self._stdin_eof:
            code = yield self._cat(self._out)
            return code
        for n in range(1, self.api.attach_lines + 1):
            if n > 1:
                yield self._wait(self.api._delay(self.api.log_interval))
            self._out(f"attach line {n}\n".encode())
        return 0

    def _err_writer(self):
        return self._err

    @defer.inlineCallbacks
    def _cat(self, out):
        while True:
            data = yield self._read_stdin()
            if not data:
                return 0
            out(data)

    @defer.inlineCallbacks
    def _run_argv(self, argv: list[str], to_stderr: bool):
        if not argv:
            return 0
        out = self._err if to_stderr else self._out
        err = self._err
        cmd, args = os.path.basename(argv[0]), argv[1:]
        if cmd in ("sh", "bash", "ash", "dash") and len(args) >= 2 and args[0] == "-c":
            code = 0
            for connector, sub, sub_err in _parse_script(args[1]):
                if connector == "&&" and code != 0:
                    continue
                if connector == "||" and code == 0:
                    continue
                code = yield self._run_argv(sub, sub_err)
            return code
        if cmd == "echo":
            newline = True
            if args and args[0] == "-n":
                newline, args = False, args[1:]
            out((" ".join(args) + ("\n" if newline else "")).encode())
            return 0
        if cmd == "stderr":
            err((" ".join(args) + "\n").encode())
            return 0
        if cmd == "cat":
            if args and args != ["-"]:
                err(f"cat: {args[0]}: No such file or directory\n".encode())
                return 1
            code = yield self._cat(out)
            return code
        if cmd == "exit":
            raise _Exit(int(args[0]) & 0xFF if args else 0)
        if cmd == "true":
            return 0
        if cmd == "false":
            return 1
        if cmd == "sleep":
            yield self._wait(self.api._delay(float(args[0]) if args else 0.0))
            return 0
        if cmd == "hostname":
            out((self.api.pod_name + "\n").encode())
            return 0
        if cmd == "pwd":
            out(b"/\n")
            return 0
        err(f"sh: {argv[0]}: not found\n".encode())
        return 127


def _exec_status(code: int, argv: list[str]) -> dict:
    """The status the kubelet writes on the error channel (v4/v5)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            "command terminated with non-zero exit code: error executing command "
            f"[{' '.join(argv)}], exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


class _StreamOptions:
    def __init__(self, query: dict[str, list[str]], kind: str):
        def flag(name: str) -> bool:
            return (query.get(name) or ["false"])[0] in ("true", "1")

        self.kind = kind
        self.stdin = flag("stdin")
        self.stdout = flag("stdout")
        self.tty = flag("tty")
        self.stderr = flag("stderr") and not self.tty
        self.command = list(query.get("command", []))
        self.container = (query.get("container") or [""])[0]


# -- exec / attach over WebSocket (v5 / v4 channel protocol)


class _WSExecIO:
    def __init__(self, proto: _K8sWebSocketProtocol, opts: _StreamOptions):
        self.proto = proto
        self.opts = opts

    def _send(self, channel: int, data: bytes) -> None:
        if data and not self.proto.closing:
            self.proto.sendMessage(bytes([channel]) + data, isBinary=True)

    def stdout(self, data: bytes) -> None:
        if self.opts.stdout:
            self._send(STREAM_STDOUT, data)

    def stderr(self, data: bytes) -> None:
        if self.opts.stderr:
            self._send(STREAM_STDERR, data)
        elif self.opts.tty:
            self.stdout(data)

    def exit(self, code: int) -> None:
        rec = self.proto.record
        rec.events.append({"event": "exit", "code": code})
        status = json.dumps(_exec_status(code, self.opts.command), separators=(",", ":")).encode()
        self._send(STREAM_ERROR, status)
        self.proto.closing = True
        self.proto.sendClose(code=1000)


class _K8sWebSocketProtocol(WebSocketServerProtocol):
    """WebSocket endpoint for exec/attach (channel protocol) and port-forward (SPDY tunnel)."""

    api: StandinAPI
    record: RequestRecord
    kind: str
    opts: _StreamOptions | None

    def __init__(self):
        super().__init__()
        self.closing = False
        self.process: _FakeProcess | None = None
        self.spdy: SpdySession | None = None
        self.forwarder: _PortForwarder | None = None
        self.channel_version = 5

    def onConnect(self, request):
        f = self.factory
        self.api, self.record, self.kind, self.opts = (
            f.standin_api,
            f.standin_record,
            f.standin_kind,
            f.standin_opts,
        )
        offered = list(request.protocols)
        if self.kind == "portforward":
            wanted = [WS_PORTFORWARD_TUNNEL]
        else:
            wanted = [p for p in (WS_CHANNEL_V5, WS_CHANNEL_V4) if p in self.api.ws_channel_protocols]
        chosen = next((p for p in offered if p in wanted), None)
        if chosen is None:
            self.record.status = 400
            self.record.finished = True
            self.api._record_changed(self.record)
            raise ConnectionDeny(
                400, f"unable to negotiate a subprotocol: client offered {offered}, server supports {wanted}"
            )
        self.record.status = 101
        self.record.upgrade = "websocket"
        self.record.protocol = chosen
        self.channel_version = 5 if chosen == WS_CHANNEL_V5 else 4
        self.api._record_changed(self.record)
        return chosen

    def onOpen(self):
        if self.kind == "portforward":
            self.forwarder = _PortForwarder(self.api, self.record)
            self.spdy = SpdySession(
                send=lambda b: self.sendMessage(b, isBinary=True) if not self.closing else None,
                close=self._close_ws,
                on_stream=self.forwarder.on_stream,
                on_goaway=self._close_ws,
            )
            self.forwarder.session = self.spdy
            return
        opts = self.opts
        assert opts is not None
        if self.kind == "exec":
            self.record.events.append(
                {
                    "event": "exec",
                    "command": opts.command,
                    "container": opts.container,
                    "tty": opts.tty,
                    "stdin": opts.stdin,
                }
            )
        else:
            self.record.events.append(
                {"event": "attach", "container": opts.container, "tty": opts.tty, "stdin": opts.stdin}
            )
        self.process = _FakeProcess(
            self.api,
            _WSExecIO(self, opts),
            opts.command,
            stdin=opts.stdin,
            tty=opts.tty,
            attach=self.kind == "attach",
        )
        self.process.start()

    def _close_ws(self):
        if not self.closing:
            self.closing = True
            self.sendClose(code=1000)

    def onMessage(self, payload, isBinary):
        if self.spdy is not None:
            self.spdy.data_received(payload)
            return
        if self.process is None or not payload:
            return
        channel, data = payload[0], payload[1:]
        if channel == STREAM_STDIN:
            self.process.stdin_data(data)
        elif channel == STREAM_RESIZE:
            try:
                size = json.loads(data.decode() or "{}")
            except ValueError:
                size = {"raw": data.decode("latin-1")}
            self.record.events.append({"event": "resize", "size": size})
            self.process.resized(size)
        elif channel == STREAM_CLOSE and self.channel_version >= 5 and data:
            self.record.events.append({"event": "close-stream", "stream": data[0]})
            if data[0] == STREAM_STDIN:
                self.process.stdin_closed()

    def onClose(self, wasClean, code, reason):
        self.closing = True
        if self.process is not None and self.process.exit_code is None:
            self.process.abort()
        if self.spdy is not None:
            self.spdy.connection_lost()
        if self.forwarder is not None:
            self.forwarder.connection_lost()
            if self.spdy is not None:
                self.record.events.append({"event": "spdy-frames", "counts": dict(self.spdy.frame_counts)})
        if not self.record.finished:
            self.record.finished = True
            self.api._record_changed(self.record)


# -- exec / attach over SPDY (fallback)


class _SpdyExec:
    def __init__(self, api: StandinAPI, record: RequestRecord, opts: _StreamOptions, version: str):
        self.api = api
        self.record = record
        self.opts = opts
        self.version = version
        self.session: SpdySession | None = None
        self.streams: dict[str, SpdyStream] = {}
        self.expected = {"error"}
        if opts.stdin:
            self.expected.add("stdin")
        if opts.stdout:
            self.expected.add("stdout")
        if opts.stderr:
            self.expected.add("stderr")
        if opts.tty and version != "v2.channel.k8s.io" and version != "channel.k8s.io":
            self.expected.add("resize")
        self.process: _FakeProcess | None = None

    def on_stream(self, stream: SpdyStream) -> None:
        st = stream.headers.get("streamtype", "")
        if st not in self.expected or st in self.streams:
            stream.reset(SPDY_RST_REFUSED_STREAM)
            return
        self.streams[st] = stream
        if st == "stdin":
            stream.on_data = lambda d: self.process.stdin_data(d) if self.process else None
            stream.on_fin = lambda: self.process.stdin_closed() if self.process else None
            stream.on_reset = stream.on_fin
        elif st == "resize":
            buf = bytearray()

            def on_resize(d: bytes, buf=buf) -> None:
                buf.extend(d)
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf[:] = rest
                    try:
                        size = json.loads(line)
                    except ValueError:
                        continue
                    self.record.events.append({"event": "resize", "size": size})
                    if self.process is not None:
                        self.process.resized(size)

            stream.on_data = on_resize
        if set(self.streams) == self.expected:
            self._start()

    def _start(self) -> None:
        opts = self.opts
        if opts.kind == "exec":
            self.record.events.append(
                {
                    "event": "exec",
                    "command": opts.command,
                    "container": opts.container,
                    "tty": opts.tty,
                    "stdin": opts.stdin,
                }
            )
        else:
            self.record.events.append(
                {"event": "attach", "container": opts.container, "tty": opts.tty, "stdin": opts.stdin}
            )
        self.process = _FakeProcess(
            self.api, self, opts.command, stdin=opts.stdin, tty=opts.tty, attach=opts.kind == "attach"
        )
        self.process.start()

    # IO for _FakeProcess
    def stdout(self, data: bytes) -> None:
        s = self.streams.get("stdout")
        if s is not None:
            s.write(data)

    def stderr(self, data: bytes) -> None:
        s = self.streams.get("stderr")
        if s is not None:
            s.write(data)
        elif self.opts.tty:
            self.stdout(data)

    def exit(self, code: int) -> None:
        self.record.events.append({"event": "exit", "code": code})
        err = self.streams["error"]
        if self.version == "v4.channel.k8s.io" or self.version.startswith("v5"):
            err.write(json.dumps(_exec_status(code, self.opts.command), separators=(",", ":")).encode())
        elif code != 0:
            err.write(f"command terminated with non-zero exit code: exit code {code}".encode())
        for s in self.streams.values():
            s.close()
        if self.session is not None:
            self.session.goaway()

    def connection_lost(self) -> None:
        if self.process is not None and self.process.exit_code is None:
            self.process.abort()


# -- port-forward


class _ForwardProtocol(protocol.Protocol):
    def __init__(self, pair: _ForwardPair):
        self.pair = pair

    def connectionMade(self) -> None:
        self.pair.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.pair.data.write(data)

    def connectionLost(self, reason=None) -> None:
        self.pair.target_closed()


class _ForwardPair:
    def __init__(self, fwd: _PortForwarder, request_id: str):
        self.fwd = fwd
        self.request_id = request_id
        self.error: SpdyStream | None = None
        self.data: SpdyStream | None = None
        self.proto: _ForwardProtocol | None = None
        self.pending = bytearray()
        self.client_fin = False
        self.finished = False
        self.port = 0
        self.connecting: defer.Deferred | None = None
        self.target_gone = False

    def start(self) -> None:
        assert self.data is not None and self.error is not None
        self.port = int(self.data.headers.get("port", "0"))
        target = self.fwd.api.forward_target_for(self.port)
        self.fwd.record.events.append(
            {
                "event": "portforward-stream",
                "requestid": self.request_id,
                "port": self.port,
                "target": f"{target[0]}:{target[1]}" if target else None,
            }
        )
        self.data.on_data = self._from_client
        self.data.on_fin = self._client_fin
        self.data.on_reset = self._client_reset
        self.error.on_reset = self._client_reset
        if target is None:
            self._fail("no forward target configured for this port")
            return
        ep = endpoints.TCP4ClientEndpoint(self.fwd.api.reactor, target[0], target[1], timeout=10)
        self.connecting = endpoints.connectProtocol(ep, _ForwardProtocol(self))
        self.connecting.addErrback(lambda f: self._fail(f.getErrorMessage()))

    def _fail(self, why: str) -> None:
        if self.finished:
            return
        self.finished = True
        api = self.fwd.api
        msg = f"error forwarding port {self.port} to pod {api.pod_name}, uid {api.pod_uid}: {why}"
        self.fwd.record.events.append(
            {"event": "portforward-error", "requestid": self.request_id, "message": msg}
        )
        if self.error is not None:
            self.error.write(msg.encode())
            self.error.close()
        if self.data is not None:
            self.data.close()

    def connected(self, proto: _ForwardProtocol) -> None:
        self.proto = proto
        if self.finished:
            proto.transport.abortConnection()
            return
        if self.pending:
            proto.transport.write(bytes(self.pending))
            self.pending.clear()
        if self.client_fin:
            self._half_close()

    def _from_client(self, data: bytes) -> None:
        if self.target_gone:
            return
        if self.proto is not None:
            self.proto.transport.write(data)
        else:
            self.pending += data

    def _half_close(self) -> None:
        t = self.proto.transport if self.proto else None
        if t is None or self.target_gone:
            return
        if hasattr(t, "loseWriteConnection"):
            t.loseWriteConnection()
        else:
            t.loseConnection()

    def _client_fin(self) -> None:
        self.client_fin = True
        if self.proto is not None:
            self._half_close()

    def _client_reset(self) -> None:
        if self.proto is not None and not self.target_gone:
            self.proto.transport.loseConnection()
        elif self.connecting is not None and not self.connecting.called:
            self.finished = True
            self.connecting.cancel()

    def target_closed(self) -> None:
        self.target_gone = True
        if self.finished:
            return
        self.finished = True
        self.fwd.record.events.append({"event": "portforward-closed", "requestid": self.request_id})
        if self.data is not None:
            self.data.close()
        if self.error is not None:
            self.error.close()


class _PortForwarder:
    """Pairs error/data streams by requestID and forwards each pair to a TCP target."""

    def __init__(self, api: StandinAPI, record: RequestRecord):
        self.api = api
        self.record = record
        self.session: SpdySession | None = None
        self.pairs: dict[str, _ForwardPair] = {}
        self.active: list[_ForwardPair] = []

    def on_stream(self, stream: SpdyStream) -> None:
        h = stream.headers
        st = h.get("streamtype", "")
        port = h.get("port", "")
        if st not in ("error", "data") or not port.isdigit() or not 0 < int(port) < 65536:
            stream.reset(SPDY_RST_PROTOCOL_ERROR)
            return
        rid = h.get("requestid")
        if rid is None:  # very old clients: derive it from the stream id
            rid = str(stream.id if st == "error" else stream.id - 2)
        pair = self.pairs.get(rid)
        if pair is None:
            pair = self.pairs[rid] = _ForwardPair(self, rid)
        if getattr(pair, st) is not None:
            stream.reset(SPDY_RST_PROTOCOL_ERROR)
            return
        setattr(pair, st, stream)
        if pair.error is not None and pair.data is not None:
            del self.pairs[rid]
            self.active.append(pair)
            pair.start()

    def connection_lost(self) -> None:
        for pair in self.active:
            pair.finished = True
            pair._client_reset()


# --------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------


class StandinAPI:
    """Configuration, fake objects and request records of the stand-in.

    :param token: the bearer token accepted (``None``: no token is needed).
    :param extra_tokens: more accepted tokens.
    :param forward_target: ``(host, port)`` (or ``"host:port"``) that every
        port-forward connection is connected to, whatever the pod port.
    :param forward_targets: ``{pod_port: (host, port)}``, overrides *forward_target*.
    :param log_interval: seconds between log lines with ``follow`` (and
        between attach lines).
    :param log_lines: lines in a non-follow log.
    :param attach_lines: lines written by attach without stdin.
    :param accept_client_certs: whether a verified TLS client certificate
        (without an Authorization header) authenticates a request.
    :param websocket: whether exec/attach/port-forward accept the WebSocket
        upgrade (False: answer 400 to it, so kubectl falls back to SPDY).
    :param spdy: whether they accept the legacy SPDY/3.1 upgrade.
    :param records_file: a path where each record is appended as a JSON
        line (once when it is authenticated, again when it finishes).
    """

    def __init__(
        self,
        token: str | None = DEFAULT_TOKEN,
        *,
        extra_tokens: Iterable[str] = (),
        namespace: str = "default",
        pod_name: str = "demo",
        container_name: str = "demo",
        forward_target: tuple[str, int] | str | None = None,
        forward_targets: dict[int, tuple[str, int]] | None = None,
        log_interval: float = 1.0,
        log_lines: int = 3,
        attach_lines: int = 3,
        server_version: str = "v1.37.0",
        accept_client_certs: bool = True,
        websocket: bool = True,
        spdy: bool = True,
        ws_channel_protocols: Iterable[str] = (WS_CHANNEL_V5, WS_CHANNEL_V4),
        records_file: str | None = None,
        reactor=None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.tokens = set(extra_tokens)
        self.token = token
        if token is not None:
            self.tokens.add(token)
        self.namespace = namespace
        self.pod_name = pod_name
        self.container_name = container_name
        self.pod_uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{pod_name}.{namespace}.k8s-standin"))
        if isinstance(forward_target, str):
            host, _, port = forward_target.rpartition(":")
            forward_target = (host or "127.0.0.1", int(port))
        self.forward_target = forward_target
        self.forward_targets = dict(forward_targets or {})
        self.log_interval = log_interval
        self.log_lines = log_lines
        self.attach_lines = attach_lines
        self.server_version = server_version
        self.accept_client_certs = accept_client_certs
        self.websocket = websocket
        self.spdy = spdy
        self.ws_channel_protocols = tuple(ws_channel_protocols)
        self.records_file = records_file
        self.records: list[RequestRecord] = []
        self.created = time.time()
        self._ids = itertools.count(1)
        self._waiters: list[tuple[Callable[[RequestRecord], bool], defer.Deferred]] = []
        self.listen_address = "127.0.0.1:443"

    # -- records
    def find(self, **match) -> list[RequestRecord]:
        """Records whose attributes equal the given values, e.g. ``find(kind="exec")``."""
        return [r for r in self.records if all(getattr(r, k) == v for k, v in match.items())]

    def clear_records(self) -> None:
        self.records.clear()

    def wait_for_record(
        self, predicate: Callable[[RequestRecord], bool], timeout: float = 10.0
    ) -> defer.Deferred:
        """A Deferred firing with the first record for which *predicate* holds.

        Checked now and whenever a record changes (authenticated, upgraded,
        finished); fails with ``defer.TimeoutError`` after *timeout* seconds.
        E.g. ``api.wait_for_record(lambda r: r.kind == "log" and r.finished)``.
        """
        for rec in self.records:
            if predicate(rec):
                return defer.succeed(rec)
        d: defer.Deferred = defer.Deferred()
        entry = (predicate, d)
        self._waiters.append(entry)

        def expired() -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)
                d.errback(defer.TimeoutError(f"no matching record within {timeout}s"))

        call = self.reactor.callLater(timeout, expired)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def _record_changed(self, rec: RequestRecord) -> None:
        if self.records_file:
            with open(self.records_file, "a") as f:
                f.write(json.dumps(rec.to_dict()) + "\n")
        for entry in list(self._waiters):
            predicate, d = entry
            if predicate(rec) and entry in self._waiters:
                self._waiters.remove(entry)
                d.callback(rec)

    def forward_target_for(self, port: int) -> tuple[str, int] | None:
        return self.forward_targets.get(port, self.forward_target)

    def _delay(self, seconds: float) -> defer.Deferred:
        d = defer.Deferred(lambda d: call.cancel() if call.active() else None)
        call = self.reactor.callLater(max(0.0, seconds), lambda: d.called or d.callback(None))
        return d

    # -- objects
    def pod(self) -> dict:
        ts = _rfc3339(self.created)
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.pod_name,
                "namespace": self.namespace,
                "uid": self.pod_uid,
                "resourceVersion": "1",
                "creationTimestamp": ts,
                "labels": {"app": self.pod_name},
            },
            "spec": {
                "containers": [
                    {
                        "name": self.container_name,
                        "image": "k8s-standin/demo:latest",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "stdin": True,
                        "tty": False,
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent",
                    }
                ],
                "restartPolicy": "Always",
                "nodeName": "standin-node",
                "serviceAccountName": "default",
            },
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": ts},
                    {"type": "Ready", "status": "True", "lastTransitionTime": ts},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": ts},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts},
                ],
                "startTime": ts,
                "containerStatuses": [
                    {
                        "name": self.container_name,
                        "state": {"running": {"startedAt": ts}},
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "image": "k8s-standin/demo:latest",
                        "imageID": "",
                        "containerID": "standin://" + self.pod_uid,
                    }
                ],
                "qosClass": "BestEffort",
            },
        }

    def namespace_obj(self, name: str) -> dict:
        return {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".ns")),
                "resourceVersion": "1",
                "creationTimestamp": _rfc3339(self.created),
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    def pod_table(self, pods: list[dict], include_object: str) -> dict:
        rows = []
        for pod in pods:
            if include_object == "None":
                obj = None
            elif include_object == "Object":
                obj = pod
            else:
                obj = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": pod["metadata"],
                }
            row: dict[str, Any] = {
                "cells": [
                    pod["metadata"]["name"],
                    "1/1",
                    pod["status"]["phase"],
                    "0",
                    _age(time.time() - self.created),
                ]
            }
            if obj is not None:
                row["object"] = obj
            rows.append(row)

        def col(name: str, desc: str, fmt: str = "") -> dict:
            return {"name": name, "type": "string", "format": fmt, "description": desc, "priority": 0}

        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "1"},
            "columnDefinitions": [
                col("Name", "Name must be unique within a namespace.", "name"),
                col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
                col("Status", "The aggregate status of the containers in this pod."),
                col("Restarts", "The number of times the containers in this pod have been restarted."),
                col(
                    "Age",
                    "CreationTimestamp is a timestamp representing the server time when this object "
                    "was created.",
                ),
            ],
            "rows": rows,
        }

    def version(self) -> dict:
        v = self.server_version.lstrip("v").split("-")[0].split("+")[0].split(".")
        return {
            "major": v[0],
            "minor": v[1] if len(v) > 1 else "0",
            "gitVersion": self.server_version,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.25.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }


# --------------------------------------------------------------------------
# HTTP resource
# --------------------------------------------------------------------------


def _tls_transport(request):
    ch = request.channel
    conn = getattr(ch, "_conn", None)  # HTTP/2: H2Stream -> H2Connection
    return conn.transport if conn is not None else getattr(ch, "transport", None)


def _header_dict(request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        out.setdefault(name.decode("latin-1").lower(), []).extend(v.decode("latin-1") for v in values)
    return out


def _tokens(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


class _APIResource(Resource):
    isLeaf = True

    def __init__(self, api: StandinAPI):
        super().__init__()
        self.api = api

    # -- helpers
    def _json(self, request, rec: RequestRecord, obj: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache, private")
        rec.status = code
        rec.finished = True
        self.api._record_changed(rec)
        return json.dumps(obj).encode()

    def _not_found(
        self, request, rec, what: str = "the server could not find the requested resource", details=None
    ):
        return self._json(request, rec, _status(404, "NotFound", what, details or {}), 404)

    def _record(self, request) -> RequestRecord:
        t = _tls_transport(request)
        alpn = getattr(t, "negotiatedProtocol", None)
        cert_subject = cert_sha = None
        cert = None
        try:
            cert = t.getPeerCertificate() if t is not None else None
        except Exception:
            cert = None
        if cert is not None:
            c = cert.to_cryptography()
            cert_subject = c.subject.rfc4514_string()
            cert_sha = c.fingerprint(hashes.SHA256()).hex()
        sni = None
        try:
            name = t.getHandle().get_servername() if t is not None else None
            sni = name.decode("latin-1") if name else None
        except Exception:
            sni = None
        peer = request.getClientAddress()
        split = urlsplit(request.uri.decode("latin-1"))
        return RequestRecord(
            id=next(self.api._ids),
            time=time.time(),
            method=request.method.decode(),
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=_header_dict(request),
            http_version=request.clientproto.decode(),
            alpn=alpn.decode() if isinstance(alpn, bytes) else alpn,
            peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            authorization=(request.getHeader(b"authorization") or b"").decode("latin-1") or None,
            client_cert_subject=cert_subject,
            client_cert_sha256=cert_sha,
            sni=sni,
        )

    def _authenticate(self, rec: RequestRecord) -> bool:
        auth = rec.authorization
        if auth is not None:
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() == "bearer" and cred.strip() in self.api.tokens:
                rec.auth_method = "token"
                return True
            return False
        if rec.client_cert_subject is not None and self.api.accept_client_certs:
            rec.auth_method = "client-cert"
            return True
        if not self.api.tokens:
            rec.auth_method = "anonymous"
            return True
        return False

    # -- entry point
    def render(self, request):
        api = self.api
        rec = self._record(request)
        api.records.append(rec)
        rec.authenticated = self._authenticate(rec)
        if not rec.authenticated:
            rec.kind = "unauthorized"
            request.setHeader(b"www-authenticate", b'Bearer realm="k8s-standin"')
            return self._json(request, rec, _status(401, "Unauthorized", "Unauthorized"), 401)
        api._record_changed(rec)
        parts = [p for p in rec.path.split("/") if p]
        method = rec.method
        if parts in (["version"],):
            rec.kind = "version"
            return self._json(request, rec, api.version())
        if parts in (["healthz"], ["livez"], ["readyz"]):
            rec.kind = "health"
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            rec.status, rec.finished = 200, True
            api._record_changed(rec)
            return b"ok"
        if parts == ["api"]:
            rec.kind = "discovery"
            return self._json(
                request,
                rec,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": api.listen_address}
                    ],
                },
            )
        if parts == ["apis"]:
            rec.kind = "discovery"
            return self._json(request, rec, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if parts == ["api", "v1"]:
            rec.kind = "discovery"
            return self._json(
                request, rec, {"kind": "APIResourceList", "groupVersion": "v1", "resources": _POD_RESOURCES}
            )
        if parts and parts[0] == "openapi":
            rec.kind = "openapi"
            if parts == ["openapi", "v3"]:
                return self._json(request, rec, {"paths": {}})
            return self._not_found(request, rec)
        if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
            return self._core(request, rec, parts[2:], method)
        rec.kind = "unknown"
        return self._not_found(request, rec)

    def _core(self, request, rec: RequestRecord, parts: list[str], method: str):
        api = self.api
        if parts == ["namespaces"]:
            rec.kind = "list"
            return self._json(
                request,
                rec,
                {
                    "kind": "NamespaceList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": [api.namespace_obj(api.namespace)],
                },
            )
        if parts == ["pods"]:
            return self._pods(request, rec, None)
        if len(parts) >= 2 and parts[0] == "namespaces":
            ns = parts[1]
            if len(parts) == 2:
                rec.kind = "get"
                if ns != api.namespace:
                    return self._not_found(
                        request, rec, f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
                    )
                return self._json(request, rec, api.namespace_obj(ns))
            if parts[2] == "pods":
                if len(parts) == 3:
                    return self._pods(request, rec, ns)
                name = parts[3]
                if ns != api.namespace or name != api.pod_name:
                    rec.kind = "get"
                    return self._not_found(
                        request, rec, f'pods "{name}" not found', {"name": name, "kind": "pods"}
                    )
                sub = parts[4] if len(parts) > 4 else None
                if sub is None:
                    rec.kind = "get"
                    if method not in ("GET", "HEAD"):
                        return self._json(
                            request,
                            rec,
                            _status(405, "MethodNotAllowed", f"{method} is not supported by the stand-in"),
                            405,
                        )
                    return self._one_pod(request, rec)
                if sub == "log":
                    return self._log(request, rec)
                if sub in ("exec", "attach", "portforward"):
                    return self._stream(request, rec, sub)
                if sub == "status":
                    rec.kind = "get"
                    return self._json(request, rec, api.pod())
        rec.kind = "unknown"
        return self._not_found(request, rec)

    def _wants_table(self, request) -> bool:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        return "as=Table" in accept

    def _pods(self, request, rec, ns):
        rec.kind = "list"
        api = self.api
        pods = [api.pod()] if ns in (None, api.namespace) else []
        if self._wants_table(request):
            inc = (rec.query.get("includeObject") or ["Metadata"])[0]
            return self._json(request, rec, api.pod_table(pods, inc))
        return self._json(
            request,
            rec,
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": pods},
        )

    def _one_pod(self, request, rec):
        api = self.api
        if self._wants_table(request):
            inc = (rec.query.get("includeObject") or ["Metadata"])[0]
            return self._json(request, rec, api.pod_table([api.pod()], inc))
        return self._json(request, rec, api.pod())

    # -- logs
    def _log(self, request, rec):
        rec.kind = "log"
        api = self.api
        q = rec.query
        container = (q.get("container") or [api.container_name])[0]
        if container != api.container_name:
            return self._json(
                request,
                rec,
                _status(400, "BadRequest", f"container {container} is not valid for pod {api.pod_name}"),
                400,
            )
        follow = (q.get("follow") or ["false"])[0] == "true"
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-cache, private")
        rec.status = 200
        if not follow:
            rec.finished = True
            api._record_changed(rec)
            return "".join(f"{api.pod_name} log line {n}\n" for n in range(1, api.log_lines + 1)).encode()
        counter = itertools.count(1)
        state = {"gone": False}

        def tick():
            n = next(counter)
            request.write(f"{api.pod_name} log line {n}\n".encode())
            rec.events.append({"event": "log-line", "n": n})

        loop = LoopingCall(tick)
        loop.clock = api.reactor

        def gone(_):
            state["gone"] = True
            if loop.running:
                loop.stop()
            rec.events.append({"event": "client-gone"})
            rec.finished = True
            api._record_changed(rec)

        request.notifyFinish().addBoth(gone)
        loop.start(api.log_interval, now=True)
        return NOT_DONE_YET

    # -- exec / attach / portforward
    def _stream(self, request, rec: RequestRecord, sub: str):
        rec.kind = sub
        api = self.api
        upgrade = _tokens(rec.header_values("upgrade"))
        upgrade_l = [u.lower() for u in upgrade]
        opts = _StreamOptions(rec.query, sub) if sub != "portforward" else None
        if opts is not None and sub == "exec" and not opts.command:
            return self._json(
                request, rec, _status(400, "BadRequest", "you must specify at least 1 command"), 400
            )
        if opts is not None and opts.container and opts.container != api.container_name:
            return self._json(
                request,
                rec,
                _status(400, "BadRequest", f"container {opts.container} is not valid for pod {api.pod_name}"),
                400,
            )
        if "websocket" in upgrade_l:
            if not api.websocket or request.clientproto != b"HTTP/1.1":
                return self._json(
                    request, rec, _status(400, "BadRequest", "websocket upgrade is not supported here"), 400
                )
            return self._websocket(request, rec, sub, opts)
        if any(u.lower().startswith("spdy/") for u in upgrade):
            if not api.spdy or request.clientproto != b"HTTP/1.1":
                return self._json(
                    request, rec, _status(400, "BadRequest", "SPDY upgrade is not supported here"), 400
                )
            return self._spdy(request, rec, sub, opts)
        return self._json(request, rec, _status(400, "BadRequest", "Upgrade request required"), 400)

    def _websocket(self, request, rec, sub, opts):
        factory = WebSocketServerFactory()
        factory.protocol = _K8sWebSocketProtocol
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=30, closeHandshakeTimeout=2)
        factory.standin_api = self.api
        factory.standin_record = rec
        factory.standin_kind = sub
        factory.standin_opts = opts
        channel = request.channel
        result = WebSocketResource(factory).render(request)
        if hasattr(channel, "setTimeout"):
            channel.setTimeout(None)
        return result

    def _spdy(self, request, rec, sub, opts):
        api = self.api
        offered = _tokens(rec.header_values("x-stream-protocol-version"))
        supported = [SPDY_PORTFORWARD] if sub == "portforward" else list(SPDY_EXEC_PROTOCOLS)
        chosen = next((p for p in supported if p in offered), None)
        if chosen is None:
            msg = (
                "unable to upgrade: unable to negotiate protocol: "
                f"client supports {offered}, server supports {supported}"
            )
            return self._json(request, rec, _status(403, "Forbidden", msg), 403)
        rec.status, rec.upgrade, rec.protocol = 101, "spdy", chosen
        api._record_changed(rec)
        channel = request.channel
        transport = channel.transport
        channel.transport = None
        if hasattr(channel, "setTimeout"):
            channel.setTimeout(None)

        if sub == "portforward":
            fwd = _PortForwarder(api, rec)

            def make_session(p: _SpdyTransportProtocol) -> SpdySession:
                s = SpdySession(
                    p.transport.write, p.transport.loseConnection, fwd.on_stream, p.transport.loseConnection
                )
                fwd.session = s
                return s

            def lost() -> None:
                fwd.connection_lost()
                rec.events.append(
                    {
                        "event": "spdy-frames",
                        "counts": dict(proto.session.frame_counts) if proto.session else {},
                    }
                )
                rec.finished = True
                api._record_changed(rec)

        else:
            ex = _SpdyExec(api, rec, opts, chosen)

            def make_session(p: _SpdyTransportProtocol) -> SpdySession:
                s = SpdySession(
                    p.transport.write, p.transport.loseConnection, ex.on_stream, p.transport.loseConnection
                )
                ex.session = s
                return s

            def lost() -> None:
                ex.connection_lost()
                rec.finished = True
                api._record_changed(rec)

        proto = _SpdyTransportProtocol(make_session, lost)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = proto
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = proto
        else:
            transport.protocol = proto
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Connection: Upgrade\r\n"
            b"Upgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: " + chosen.encode() + b"\r\n\r\n"
        )
        proto.makeConnection(transport)
        if hasattr(transport, "_networkProducer"):
            transport._networkProducer.resumeProducing()
        elif hasattr(transport, "resumeProducing"):
            transport.resumeProducing()
        return NOT_DONE_YET


class _StandinSite(Site):
    http2 = True

    def acceptableProtocols(self):
        # Twisted's TLS layer puts the wrapped factory's ALPN list first, so
        # this (not only the TLS options) decides whether h2 can be chosen.
        return [b"h2", b"http/1.1"] if self.http2 else [b"http/1.1"]


def make_site(api: StandinAPI, *, http2: bool = True) -> Site:
    """A twisted.web Site that answers as the Kubernetes API server.

    With *http2* false, ALPN offers only ``http/1.1`` (Twisted asks the Site
    for its ALPN protocols, so this matters even with TLS options that list
    h2).
    """
    site = _StandinSite(_APIResource(api))
    site.http2 = http2
    site.displayTracebacks = False
    site.standin_api = api
    return site


class _AnyClientCertOptions(ssl.CertificateOptions):
    def getContext(self):
        ctx = super().getContext()
        from OpenSSL import SSL

        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
        return ctx


def make_tls_options(
    cert_file: str,
    key_file: str,
    *,
    client_ca_files: Iterable[str] = (),
    client_certs: str = "verify",
    http2: bool = True,
):
    """TLS server options (a Twisted CertificateOptions) for the stand-in.

    ALPN offers ``h2`` and ``http/1.1`` (only ``http/1.1`` when *http2* is
    false).  *client_certs*: ``"verify"`` asks for an optional client
    certificate and verifies it against *client_ca_files*; ``"any"`` asks
    for one and accepts whatever is sent (recorded only); ``"none"`` does not
    ask.
    """
    from OpenSSL import crypto

    with open(cert_file, "rb") as f:
        cert_pem = f.read()
    with open(key_file, "rb") as f:
        key_pem = f.read()
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    chain = x509.load_pem_x509_certificates(cert_pem)
    cert = crypto.X509.from_cryptography(chain[0])
    extra = [crypto.X509.from_cryptography(c) for c in chain[1:]] or None
    protocols = [b"h2", b"http/1.1"] if http2 else [b"http/1.1"]
    kw: dict[str, Any] = dict(
        privateKey=key, certificate=cert, extraCertChain=extra, acceptableProtocols=protocols
    )
    if client_certs == "verify":
        cas = []
        for path in client_ca_files:
            with open(path, "rb") as f:
                cas += [crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(f.read())]
        if not cas:
            return ssl.CertificateOptions(**kw)
        return ssl.CertificateOptions(verify=True, caCerts=cas, requireCertificate=False, **kw)
    if client_certs == "any":
        return _AnyClientCertOptions(**kw)
    if client_certs == "none":
        return ssl.CertificateOptions(**kw)
    raise ValueError(f"client_certs must be verify, any or none, not {client_certs!r}")


class StandinServer:
    """Convenience wrapper: PKI + TLS + site + listening port + kubeconfig.

    ::

        server = StandinServer(tmpdir, forward_target=("127.0.0.1", 8080))
        yield server.start()           # Deferred; then server.port, server.url
        kubeconfig = server.kubeconfig # written into tmpdir
        ...
        server.api.find(kind="exec")   # the records
        yield server.stop()

    Keyword arguments not listed go to :class:`StandinAPI`.
    """

    def __init__(
        self,
        directory: str,
        *,
        port: int = 0,
        interface: str = "127.0.0.1",
        http2: bool = True,
        client_certs: str = "verify",
        pki: PKIFiles | None = None,
        reactor=None,
        **api_kwargs,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.pki = pki or make_pki(directory)
        self.interface = interface
        self.requested_port = port
        self.http2 = http2
        self.api = StandinAPI(reactor=reactor, **api_kwargs)
        self.site = make_site(self.api, http2=http2)
        self.tls = make_tls_options(
            self.pki.server_cert,
            self.pki.server_key,
            client_ca_files=[self.pki.ca_cert],
            client_certs=client_certs,
            http2=http2,
        )
        self.listening = None
        self.port = 0
        self.kubeconfig = os.path.join(directory, "kubeconfig")

    @property
    def url(self) -> str:
        return f"https://{self.interface}:{self.port}"

    @defer.inlineCallbacks
    def start(self):
        ep = endpoints.TCP4ServerEndpoint(self.reactor, self.requested_port, interface=self.interface)
        # TLS by TLSMemoryBIOFactory, the connections counted below it (to end
        # them all at stop): the HTTP channels' transport stays the TLS one.
        self.connections = WrappingFactory(TLSMemoryBIOFactory(self.tls, False, self.site))
        self.listening = yield ep.listen(self.connections)
        self.port = self.listening.getHost().port
        self.api.listen_address = f"{self.interface}:{self.port}"
        self.write_kubeconfig(self.kubeconfig)
        return self

    def write_kubeconfig(self, path: str, **kw) -> str:
        """Write a kubeconfig for this server (keyword args: see :func:`write_kubeconfig`)."""
        kw.setdefault("token", self.api.token)
        server = kw.pop("server", self.url)
        ca = kw.pop("ca_file", self.pki.ca_cert)
        return write_kubeconfig(path, server, ca, **kw)

    def stop(self) -> defer.Deferred:
        """Stop listening and end every connection (their timers go with them)."""
        if self.listening is None:
            return defer.succeed(None)
        listening, self.listening = self.listening, None
        lost = []
        for connection in list(self.connections.protocols):
            done: defer.Deferred = defer.Deferred()
            original = connection.connectionLost

            def connection_lost(reason, original=original, done=done):
                original(reason)
                if not done.called:
                    done.callback(None)

            connection.connectionLost = connection_lost
            connection.transport.abortConnection()
            lost.append(done)
        return defer.gatherResults([defer.maybeDeferred(listening.stopListening), *lost])


# --------------------------------------------------------------------------
# __main__
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Stand-in Kubernetes API server for kubectl tests")
    p.add_argument("--dir", required=True, help="directory for the PKI, kubeconfig and records")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--forward-target", help="HOST:PORT that port-forward connections reach")
    p.add_argument("--token", default=DEFAULT_TOKEN, help="bearer token to accept ('' for none)")
    p.add_argument("--log-interval", type=float, default=1.0)
    p.add_argument("--http1-only", action="store_true", help="ALPN offers http/1.1 only")
    p.add_argument("--client-certs", choices=("verify", "any", "none"), default="verify")
    p.add_argument(
        "--no-websocket", action="store_true", help="refuse WebSocket upgrades (kubectl falls back to SPDY)"
    )
    p.add_argument("--no-spdy", action="store_true", help="refuse SPDY upgrades")
    p.add_argument("--server-version", default="v1.37.0")
    p.add_argument("--verbose", action="store_true", help="print each request record to stderr")
    args = p.parse_args(argv)

    from twisted.internet import reactor

    os.makedirs(args.dir, exist_ok=True)
    records = os.path.join(args.dir, "requests.jsonl")
    server = StandinServer(
        args.dir,
        port=args.port,
        interface=args.interface,
        http2=not args.http1_only,
        client_certs=args.client_certs,
        token=args.token or None,
        forward_target=args.forward_target,
        log_interval=args.log_interval,
        websocket=not args.no_websocket,
        spdy=not args.no_spdy,
        server_version=args.server_version,
        records_file=records,
        reactor=reactor,
    )
    if args.verbose:
        from twisted.logger import (
            FilteringLogObserver,
            LogLevel,
            LogLevelFilterPredicate,
            globalLogBeginner,
            textFileLogObserver,
        )

        globalLogBeginner.beginLoggingTo(
            [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
            redirectStandardIO=False,
        )
        changed = server.api._record_changed

        def verbose(rec: RequestRecord) -> None:
            changed(rec)
            print(
                f"[{rec.id}] {rec.method} {rec.path} {rec.http_version} alpn={rec.alpn} status={rec.status} "
                f"kind={rec.kind} upgrade={rec.upgrade} proto={rec.protocol} auth={rec.auth_method} "
                f"upgrade_headers={rec.upgrade_headers} events={rec.events[-3:]}",
                file=sys.stderr,
                flush=True,
            )

        server.api._record_changed = verbose

    def started(s: StandinServer) -> None:
        print(f"READY url={s.url} port={s.port} kubeconfig={s.kubeconfig} records={records}", flush=True)

    def failed(f) -> None:
        print(f"FAILED {f.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: server.start().addCallbacks(started, failed))
    reactor.run()  # SIGINT / SIGTERM stop it
    return 0


if __name__ == "__main__":
    sys.exit(main())
