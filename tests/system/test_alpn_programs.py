"""
ALPN on every TLS listener of the real programs (C{twistd -n
remotedialer-server|client} as subprocesses, on 127.0.0.1).

Twisted installs an ALPN callback on every TLS context.  When the
listening factory names no protocols (our header guard did not pass on
its site's), that callback selects nothing and OpenSSL aborts the
handshake of every client that offers ALPN: curl with its default options
exited 35 ("tlsv1 alert internal error") and only C{curl --no-alpn} got
through.  Here curl (its defaults, C{--http2}, C{--http1.1}, C{--no-alpn})
and Python's C{ssl} (offering h2 and http/1.1, or http/1.1 alone as Go's
gorilla WebSocket does) go to each kind of TLS listener:

  - the tunnel's C{--listen ssl:...}, with the front door on it: h2, http/1.1;
  - C{--frontdoor-listen ssl:...}: h2, http/1.1; the tunnel's listener
    beside it serves WebSocket upgrades only: http/1.1;
  - the admin endpoints of both programs (C{--admin-listen ssl:...}) and
    the CONNECT proxy (C{--connect-proxy-listen ssl:...}): http/1.1;
  - mutual TLS (C{--tls-cert/--tls-key/--client-ca-file}): h2, http/1.1.

In each, a tunnel client program connects over wss://, and a WebSocket
upgrade from a client offering ALPN is still answered 101.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, utils
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from tests.support import listen_tcp, wait
from tests.system.test_auth_programs import make_pki
from tests.system.test_programs import Program, ProgramTestCase, parse

BODY = b"hello through the tunnel"
H2_AND_HTTP_1_1 = ("h2", "http/1.1")
HTTP_1_1 = ("http/1.1",)
#: curl's option ("": its defaults) -> the HTTP version it gets from a listener offering h2 and http/1.1.
FRONT_DOOR_VERSIONS = {"": "2", "--http2": "2", "--http1.1": "1.1", "--no-alpn": "1.1"}
#: ... and from one offering http/1.1 only.
HTTP_1_1_VERSIONS = {"": "1.1", "--http2": "1.1", "--http1.1": "1.1", "--no-alpn": "1.1"}
#: A WebSocket upgrade to the tunnel, as a Go agent sends it (%s: its X-Tunnel-ID).
UPGRADE = (b"GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"X-Tunnel-ID: %s\r\n\r\n")
_STARTED = re.compile(rb"(tunnel listener|front door|admin endpoint|connect-proxy)(?::\S*)? \(TLS\) "
                      rb"starting on (\d+)")


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


def tls_exchange(port: int, offered: tuple[str, ...], ca: str, cert: str | None = None,
                 key: str | None = None, request: bytes | None = None) -> tuple[str | None, bytes]:
    """
    Blocking (run it in a thread): Python's C{ssl} to 127.0.0.1:C{port},
    offering C{offered} (ALPN); the protocol the server selected, and with
    C{request} the head of the answer to it.
    """
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(list(offered))
    if cert is not None:
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        selected = tls.selected_alpn_protocol()
        answer = b""
        if request is not None:
            tls.sendall(request)
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return selected, answer


def offers(service) -> dict[str, list[bytes]]:
    """What each listener of a program's service would offer on TLS (ALPN), by its log prefix."""
    found = {}
    for listener in service:
        if isinstance(listener, StreamServerEndpointService):
            factory = getattr(listener.factory, "wrappedFactory", listener.factory)  # --tls-cert wraps it
            found[factory.logPrefix()] = IProtocolNegotiationFactory(factory).acceptableProtocols()
    return found


class ListenerProtocolsTests(TestCase):
    """What each listener of the programs offers for ALPN, from makeService (nothing listens)."""

    def test_tunnel_listener_with_front_door(self):
        top = server_tap.makeService(parse(server_tap.Options, [
            "--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "0", "--connect-proxy-listen", "0"]))
        self.assertEqual(offers(top), {
            "tunnel listener": [b"h2", b"http/1.1"], "admin endpoint": [b"http/1.1"],
            "connect-proxy:tcp:0:interface=127.0.0.1": [b"http/1.1"]})

    def test_frontdoor_listener(self):
        """The front door's listener: h2 and http/1.1; the tunnel's beside it: upgrades, HTTP/1.1."""
        top = server_tap.makeService(parse(server_tap.Options, [
            "--listen", "tcp:0:interface=127.0.0.1", "--frontdoor-listen", "tcp:0:interface=127.0.0.1"]))
        self.assertEqual(offers(top), {"tunnel listener": [b"http/1.1"], "front door": [b"h2", b"http/1.1"]})

    def test_no_http2(self):
        """--no-http2: every HTTP listener offers http/1.1 only."""
        for extra in ([], ["--frontdoor-listen", "tcp:0:interface=127.0.0.1"]):
            top = server_tap.makeService(parse(server_tap.Options, [
                "--listen", "tcp:0:interface=127.0.0.1", "--no-http2", *extra]))
            self.assertEqual(set(map(tuple, offers(top).values())), {(b"http/1.1",)}, extra)

    def test_tls_cert_listener(self):
        directory = self.mktemp()
        os.makedirs(directory)
        pki = make_pki(directory)
        top = server_tap.makeService(parse(server_tap.Options, [
            "--listen", "tcp:0:interface=127.0.0.1", "--tls-cert", pki["server_cert"],
            "--tls-key", pki["server_key"], "--client-ca-file", pki["ca"]]))
        self.assertEqual(offers(top), {"tunnel listener": [b"h2", b"http/1.1"]})

    def test_client_admin_endpoint(self):
        program = client_tap.makeService(parse(client_tap.Options, ["--admin-listen", "0"]))
        self.assertEqual(offers(program), {"admin endpoint": [b"http/1.1"]})


class TLSListenersTests(ProgramTestCase):
    """Every TLS listener of the real programs, with curl's and Python's ALPN offers."""

    def setUp(self) -> None:
        self.curl_path = shutil.which("curl")
        if self.curl_path is None:
            raise SkipTest("curl is not installed")
        directory = os.path.abspath(self.mktemp())  # the programs run in directories of their own
        os.makedirs(directory)
        self.pki = make_pki(directory)
        self.ssl = (f"ssl:0:interface=127.0.0.1:privateKey={self.pki['server_key']}"
                    f":certKey={self.pki['server_cert']}")

    async def target(self) -> str:
        """The demo target behind the client, in this process: its address."""
        root = Resource()
        root.putChild(b"hello", Data(BODY, "text/plain"))
        port = await listen_tcp(Site(root), self)
        return f"127.0.0.1:{port.getHost().port}"

    async def ports(self, program: Program, *names: str) -> list[int]:
        """The ports of the program's TLS listeners (by log prefix), once it said it started them."""
        deadline = 300  # x 0.1 s: the program starts and listens

        def found() -> dict[bytes, int]:
            return {m.group(1): int(m.group(2)) for m in _STARTED.finditer(program.out)}

        wanted = [name.encode() for name in names]
        while not all(n in found() for n in wanted) and program.running and deadline:
            await wait(0.1)
            deadline -= 1
        ports = found()
        self.assertTrue(all(n in ports for n in wanted), program.out + program.err)
        return [ports[n] for n in wanted]

    async def curl(self, option: str, url: str, *extra: str) -> tuple[int, str, int, bytes, bytes]:
        """curl with C{option} ("": its defaults): (exit code, HTTP version, status, body, stderr)."""
        body_path = os.path.abspath(self.mktemp())
        argv = [*filter(None, [option]), "--silent", "--show-error", "--noproxy", "*", "--max-time", "10",
                "--cacert", self.pki["ca"], "--output", body_path,
                "--write-out", "%{http_version} %{http_code}", *extra, url]
        out, err, code = await utils.getProcessOutputAndValue(self.curl_path, argv, env={})
        version, _, status = out.decode().partition(" ")
        body = b""
        if os.path.exists(body_path):
            with open(body_path, "rb") as f:
                body = f.read()
        return code, version, int(status or 0), body, err

    async def tunnel_up(self, client: Program, url: str, *extra: str) -> None:
        """Polls the front door (without ALPN) until the client's tunnel carries the request."""
        for _ in range(300):  # x 0.1 s
            code, _, status, body, _ = await self.curl("--no-alpn", url, *extra)
            if status == 200 or not client.running:
                break
            await wait(0.1)
        self.assertEqual((status, body), (200, BODY), client.out + client.err)

    async def check_curl(self, url: str, versions: dict[str, str], status: int, body: bytes | None,
                         *extra: str) -> None:
        """curl with each option: exit 0, the HTTP version expected, the status and body."""
        for option, version in versions.items():
            code, got_version, got_status, got_body, err = await self.curl(option, url, *extra)
            expected = (0, version, status, body if body is not None else got_body)
            self.assertEqual((code, got_version, got_status, got_body), expected,
                             f"curl {option or '(defaults)'} {url}: {err!r}")

    async def check_alpn(self, port: int, expected: dict[tuple[str, ...], str],
                         cert: str | None = None, key: str | None = None) -> None:
        """Python's ssl offering each key of C{expected}: the server selects its value."""
        for offered, selected in expected.items():
            got, _ = await deferToThread(tls_exchange, port, offered, self.pki["ca"], cert, key)
            self.assertEqual(got, selected, f"offering {offered} to port {port}")

    async def check_upgrade(self, port: int, offered: tuple[str, ...], key: bytes,
                            cert: str | None = None, cert_key: str | None = None) -> None:
        """A WebSocket upgrade from a client offering C{offered}: http/1.1 selected, 101."""
        selected, answer = await deferToThread(tls_exchange, port, offered, self.pki["ca"], cert, cert_key,
                                               UPGRADE % key)
        self.assertEqual(selected, "http/1.1")
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer)

    async def stop(self, *programs: Program) -> None:
        for program in programs:
            await program.terminate()
            self.assertNotIn(b"Traceback", program.out + program.err)

    def test_tunnel_listener_with_front_door(self):
        """
        --listen ssl:... (tunnel and front door): h2 and http/1.1; the admin
        endpoints of both programs and the CONNECT proxy: http/1.1; a client
        program over wss://, and a gorilla-like upgrade offering http/1.1.
        """

        async def go():
            target = await self.target()
            server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                "--listen", self.ssl, "--admin-listen", self.ssl,
                                "--connect-proxy-listen", self.ssl)
            listen, admin, proxy = await self.ports(server, "tunnel listener", "admin endpoint",
                                                    "connect-proxy")
            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"wss://127.0.0.1:{listen}/connect", "--ca-file", self.pki["ca"],
                                "--id", "foo", "--allow", f"tcp/{target}", "--admin-listen", self.ssl)
            [client_admin] = await self.ports(client, "admin endpoint")
            url = f"https://127.0.0.1:{listen}/client/foo/http/{target}/hello"
            await self.tunnel_up(client, url)

            await self.check_curl(url, FRONT_DOOR_VERSIONS, 200, BODY)
            await self.check_alpn(listen, {H2_AND_HTTP_1_1: "h2", HTTP_1_1: "http/1.1"})
            await self.check_upgrade(listen, HTTP_1_1, b"gorilla")

            for port in (admin, client_admin):
                await self.check_curl(f"https://127.0.0.1:{port}/healthz", HTTP_1_1_VERSIONS, 200, b"ok\n")
                await self.check_alpn(port, {H2_AND_HTTP_1_1: "http/1.1", HTTP_1_1: "http/1.1"})

            await self.check_alpn(proxy, {H2_AND_HTTP_1_1: "http/1.1", HTTP_1_1: "http/1.1"})
            code, version, status, body, err = await self.curl(
                "", f"http://{target}/hello", "--proxytunnel", "--proxy", f"https://127.0.0.1:{proxy}",
                "--proxy-cacert", self.pki["ca"], "--proxy-user", "foo:")
            self.assertEqual((code, version, status, body), (0, "1.1", 200, BODY), err)
            await self.stop(client, server)

        return run(go())

    def test_frontdoor_listener(self):
        """
        --frontdoor-listen ssl:...: h2 and http/1.1; the tunnel's listener
        beside it (upgrades only): http/1.1, so a WebSocket client offering
        h2 too still upgrades; a client program over wss://.
        """

        async def go():
            target = await self.target()
            server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                "--listen", self.ssl, "--frontdoor-listen", self.ssl)
            listen, front = await self.ports(server, "tunnel listener", "front door")
            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"wss://127.0.0.1:{listen}/connect", "--ca-file", self.pki["ca"],
                                "--id", "foo", "--allow", f"tcp/{target}")
            url = f"https://127.0.0.1:{front}/client/foo/http/{target}/hello"
            await self.tunnel_up(client, url)

            await self.check_curl(url, FRONT_DOOR_VERSIONS, 200, BODY)
            await self.check_alpn(front, {H2_AND_HTTP_1_1: "h2", HTTP_1_1: "http/1.1"})

            await self.check_alpn(listen, {H2_AND_HTTP_1_1: "http/1.1", HTTP_1_1: "http/1.1"})
            # (a plain GET on the tunnel path: 400, it is not a WebSocket upgrade)
            await self.check_curl(f"https://127.0.0.1:{listen}/connect", HTTP_1_1_VERSIONS, 400, None)
            await self.check_upgrade(listen, H2_AND_HTTP_1_1, b"browser-like")
            await self.check_upgrade(listen, HTTP_1_1, b"gorilla")
            await self.stop(client, server)

        return run(go())

    def test_mutual_tls(self):
        """
        --tls-cert/--tls-key/--client-ca-file (the tunnel and the front
        door): h2 and http/1.1 for callers with a client certificate; the
        client program over wss:// with its certificate.
        """

        async def go():
            target = await self.target()
            pki = self.pki
            server = self.spawn("-n", "--pidfile=", "remotedialer-server",
                                "--listen", "tcp:0:interface=127.0.0.1", "--tls-cert", pki["server_cert"],
                                "--tls-key", pki["server_key"], "--client-ca-file", pki["ca"])
            [listen] = await self.ports(server, "tunnel listener")
            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"wss://127.0.0.1:{listen}/connect", "--ca-file", pki["ca"],
                                "--cert", pki["client_cert"], "--key", pki["client_key"],
                                "--allow", f"tcp/{target}")
            # The client id is the certificate's CN.
            url = f"https://127.0.0.1:{listen}/client/agent-7/http/{target}/hello"
            certificate = ("--cert", pki["client_cert"], "--key", pki["client_key"])
            await self.tunnel_up(client, url, *certificate)

            await self.check_curl(url, FRONT_DOOR_VERSIONS, 200, BODY, *certificate)
            await self.check_alpn(listen, {H2_AND_HTTP_1_1: "h2", HTTP_1_1: "http/1.1"},
                                  pki["client_cert"], pki["client_key"])
            # Last: this upgrade is a second session for agent-7 (the newest gets the dials).
            await self.check_upgrade(listen, HTTP_1_1, b"ignored", pki["client_cert"], pki["client_key"])
            await self.stop(client, server)

        return run(go())
