"""
The programs' authentication options: the server refuses to start without
a client authentication method (unless --insecure-any-client), per-client
tokens from a clients file (re-read on SIGHUP), mutual TLS options, the
front door's access options; the client's token from a file or the
environment.  Every mistake is a one-line usage error naming the flag.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.python import usage
from twisted.trial.unittest import TestCase

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from remotedialer.server._auth import CertificateAuthorizer, TokenAuthorizer, hash_token
from tests.support import self_signed_certificate


def parse(options_class, argv):
    options = options_class()
    options.parseOptions(argv)
    return options


class ServerAuthOptionsTests(TestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def bad(self, argv, *fragments):
        with self.assertRaises(usage.UsageError) as caught:
            parse(server_tap.Options, argv)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_no_method_refuses_to_start(self):
        self.bad([], "needs client authentication", "--clients-file", "--insecure-any-client")

    def test_one_method_only(self):
        clients = self.write(f"foo sha256:{hash_token('t')}\n")
        self.bad(["--clients-file", clients, "--insecure-any-client"], "choose one of")

    def test_clients_file(self):
        clients = self.write(f"foo sha256:{hash_token('t')}\n")
        options = parse(server_tap.Options, ["--clients-file", clients])
        self.assertIsInstance(options["authorizer"], TokenAuthorizer)
        self.bad(["--clients-file", self.write("foo nonsense\n")], "--clients-file", "line 1")
        self.bad(["--clients-file", "/nonexistent/clients"], "--clients-file")

    def test_sighup_reloads(self):
        clients = self.write(f"foo sha256:{hash_token('t')}\n")
        top = server_tap.makeService(parse(server_tap.Options, ["--clients-file", clients]))
        [reloader] = [s for s in top if isinstance(s, server_tap._ReloadOnHangup)]
        with open(clients, "a") as f:
            f.write(f"bar sha256:{hash_token('u')}\n")
        reloader.reload()
        self.assertEqual(len(top.server._resource._authorizer._digests), 2)
        with open(clients, "w") as f:
            f.write("broken\n")
        reloader.reload()  # logged; the previous table stays
        self.assertEqual(len(top.server._resource._authorizer._digests), 2)

    def test_sighup_reloads_frontdoor_tokens(self):
        """
        SIGHUP reads the front-door tokens file again, for the front door
        and the proxies alike (they share it); a broken file is logged and
        the tokens before it stay.
        """
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        from remotedialer.server._access import ProxyAccess

        tokens = self.write(f"alice sha256:{hash_token('old')}\n")
        options = parse(server_tap.Options, ["--insecure-any-client", "--frontdoor-tokens-file", tokens])
        top = server_tap.makeService(options)
        [reloader] = [s for s in top if isinstance(s, server_tap._ReloadOnHangup)]
        access = options["frontdoor_access"]
        proxies = ProxyAccess(access)
        caller = IPv4Address("TCP", "10.0.0.9", 40000)

        def front_door_refuses(token: str) -> bool:
            request = DummyRequest([b""])
            request.requestHeaders.setRawHeaders(b"Proxy-Authorization", [f"Bearer {token}".encode()])
            return access.refusal(request) is not None

        self.assertEqual((front_door_refuses("old"), front_door_refuses("new")), (False, True))
        with open(tokens, "w") as f:
            f.write(f"bob sha256:{hash_token('new')}\n")
        reloader.reload()
        self.assertEqual((front_door_refuses("old"), front_door_refuses("new")), (True, False))
        self.assertIsNone(proxies.caller_refusal(caller, b"new"))
        self.assertIsNotNone(proxies.caller_refusal(caller, b"old"))
        with open(tokens, "w") as f:
            f.write("broken\n")
        reloader.reload()  # logged; the tokens before it stay
        self.assertFalse(front_door_refuses("new"))

    def test_sighup_reloads_token_scopes(self):
        """
        A tokens file's clients= scopes are read again on SIGHUP, for the
        front door and the proxies alike: a token moved from foo to bar
        is refused for foo at once.
        """
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        from remotedialer.server._access import ProxyAccess, Route

        tokens = self.write(f"ops sha256:{hash_token('t')} clients=foo,foo-*\n")
        options = parse(server_tap.Options, ["--insecure-any-client", "--frontdoor-tokens-file", tokens])
        top = server_tap.makeService(options)
        [reloader] = [s for s in top if isinstance(s, server_tap._ReloadOnHangup)]
        access = options["frontdoor_access"]
        proxies = ProxyAccess(access)
        caller = IPv4Address("TCP", "10.0.0.9", 40000)

        def front_door(client: bytes) -> int | None:
            request = DummyRequest([client, b"http", b"10.0.0.5"])
            request.requestHeaders.setRawHeaders(b"Authorization", [b"Bearer t"])
            refusal = access.refusal(request)
            return refusal[0] if refusal is not None else None

        self.assertEqual((front_door(b"foo"), front_door(b"foo-1"), front_door(b"bar")), (None, None, 403))
        self.assertIsInstance(proxies.admit(caller, b"t", "foo", "10.0.0.5", 22), Route)
        with open(tokens, "w") as f:
            f.write(f"ops sha256:{hash_token('t')} clients=bar\n")
        reloader.reload()
        self.assertEqual((front_door(b"foo"), front_door(b"bar")), (403, None))
        self.assertEqual(proxies.admit(caller, b"t", "foo", "10.0.0.5", 22).reason, "client-not-allowed")
        self.assertIsInstance(proxies.admit(caller, b"t", None, "10.0.0.5.bar.tunnel", 22), Route)

    def test_mutual_tls_options(self):
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = (os.path.abspath(p) for p in self_signed_certificate(directory))
        options = parse(server_tap.Options, ["--tls-cert", cert, "--tls-key", key, "--client-ca-file", cert])
        self.assertIsInstance(options["authorizer"], CertificateAuthorizer)
        self.assertIsNotNone(options["tls_options"])
        self.bad(["--client-ca-file", cert], "--client-ca-file needs --tls-cert")
        self.bad(["--tls-cert", cert, "--insecure-any-client"], "--tls-cert and --tls-key go together")
        self.bad(["--tls-cert", cert, "--tls-key", key, "--client-ca-file", cert,
                  "--listen", f"ssl:8443:privateKey={key}:certKey={cert}"], "on a tcp: --listen")
        self.bad(["--insecure-any-client", "--listen", "ssl:8443:privateKey=/missing.pem"], "--listen")
        self.bad(["--tls-cert", cert, "--tls-key", cert, "--insecure-any-client"], "--tls-cert/--tls-key")

    def test_sighup_reloads_tls_certificate(self):
        """SIGHUP loads the TLS listener's files again; a broken one is logged, the old one kept."""
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = (os.path.abspath(p) for p in self_signed_certificate(directory))
        top = server_tap.makeService(parse(server_tap.Options, [
            "--tls-cert", cert, "--tls-key", key, "--client-ca-file", cert]))
        [reloader] = [s for s in top if isinstance(s, server_tap._ReloadOnHangup)]
        tls = reloader._tls
        before = tls._options
        self_signed_certificate(directory)  # a new certificate and key in the same files
        reloader.reload()
        self.assertIsNot(tls._options, before)
        renewed = tls._options
        with open(key, "w") as f:
            f.write("not a key\n")
        reloader.reload()
        self.assertIs(tls._options, renewed)

    def test_peer_token_from_file_or_environment(self):
        token = self.write("peer-secret\n")
        options = parse(server_tap.Options, ["--insecure-any-client", "--id", "a", "--token-file", token,
                                             "--peers", "b:t:ws://127.0.0.1:9/connect"])
        self.assertEqual(options["token"], "peer-secret")
        self.patch(os, "environ", {**os.environ, server_tap.PEER_TOKEN_ENV: "from-env"})
        options = parse(server_tap.Options, ["--insecure-any-client", "--id", "a",
                                             "--peers", "b:t:ws://127.0.0.1:9/connect"])
        self.assertEqual(options["token"], "from-env")

    def test_peers_file(self):
        """Peers (and their tokens) from a file, not the command line."""
        peers = self.write("# id:token:url\nb:tb:ws://127.0.0.1:9/connect\n\nc:tc:wss://h:1/connect\n")
        options = parse(server_tap.Options, ["--insecure-any-client", "--id", "a", "--token-file",
                                             self.write("ta\n"), "--peers-file", peers])
        self.assertEqual(options["peer_list"], [("b", "tb", "ws://127.0.0.1:9/connect"),
                                                ("c", "tc", "wss://h:1/connect")])
        self.bad(["--insecure-any-client", "--peers-file", "/nonexistent"], "--peers-file")
        self.bad(["--insecure-any-client", "--id", "a", "--token", "t", "--peers-file", self.write("junk\n")],
                 "--peers")

    def test_front_door_access(self):
        tokens = self.write(f"alice sha256:{hash_token('x')}\n")
        options = parse(server_tap.Options, ["--insecure-any-client", "--frontdoor-tokens-file", tokens,
                                             "--forward-credentials", "--listen", "tcp:8123"])
        access = options["frontdoor_access"]
        self.assertEqual(len(access.token_hashes), 1)
        self.assertTrue(access.forward_credentials)
        self.assertEqual(access.own.ports, frozenset({8123}))
        self.bad(["--insecure-any-client", "--frontdoor-tokens-file", self.write("garbage here\n")],
                 "--frontdoor-tokens-file")
        self.bad(["--insecure-any-client", "--frontdoor-listen", "bogus:1"], "--frontdoor-listen")
        top = server_tap.makeService(parse(server_tap.Options, [
            "--insecure-any-client", "--frontdoor-listen", "tcp:8124:interface=127.0.0.1"]))
        from twisted.application.internet import StreamServerEndpointService

        self.assertEqual(len([s for s in top if isinstance(s, StreamServerEndpointService)]), 2)


class ClientTokenTests(TestCase):
    def test_token_file_and_environment(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("s3cret\n")
        service = client_tap.makeService(parse(client_tap.Options, ["--token-file", path]))
        self.assertEqual(service._rotation._headers["Authorization"], "Bearer s3cret")
        self.patch(os, "environ", {**os.environ, client_tap.TOKEN_ENV: "env-token"})
        service = client_tap.makeService(parse(client_tap.Options, []))
        self.assertEqual(service._rotation._headers["Authorization"], "Bearer env-token")

    def test_bad_client_certificate(self):
        for argv, fragment in ((["--key", "k.pem"], "--key needs --cert"),
                               (["--cert", "/nonexistent.pem"], "--cert/--key")):
            with self.assertRaises(usage.UsageError) as caught:
                parse(client_tap.Options, argv)
            self.assertIn(fragment, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_bad_token_file(self):
        with self.assertRaises(usage.UsageError) as caught:
            parse(client_tap.Options, ["--token-file", "/nonexistent/token"])
        self.assertIn("--token-file", str(caught.exception))


def make_pki(directory: str):
    """A CA, a server certificate for 127.0.0.1 and a client certificate with CN 'agent-7', as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(filename, data):
        path = os.path.abspath(os.path.join(directory, filename))
        with open(path, "wb") as f:
            f.write(data)
        return path

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, san):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=7)))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = leaf("agent-7", None)
    pem = serialization.Encoding.PEM
    return {
        "ca": write("ca.pem", ca.public_bytes(pem)),
        "server_cert": write("server.pem", server_cert.public_bytes(pem)),
        "server_key": write("server.key", pem_key(server_key)),
        "client_cert": write("client.pem", client_cert.public_bytes(pem)),
        "client_key": write("client.key", pem_key(client_key)),
    }


class MutualTLSEndToEndTests(TestCase):
    """The server program's mutual TLS listener on loopback: the client id is the certificate's."""

    timeout = 30

    def test_client_certificate_is_the_identity(self):
        from twisted.internet import defer

        from tests.support import eventually

        directory = self.mktemp()
        os.makedirs(directory)
        pki = make_pki(directory)
        top = server_tap.makeService(parse(server_tap.Options, [
            "--listen", "tcp:0:interface=127.0.0.1", "--tls-cert", pki["server_cert"],
            "--tls-key", pki["server_key"], "--client-ca-file", pki["ca"]]))
        top.startService()
        self.addCleanup(top.stopService)

        async def go():
            from twisted.application.internet import StreamServerEndpointService

            [listener] = [s for s in top if isinstance(s, StreamServerEndpointService)]
            port = (await listener._waitingForPort).getHost().port
            client = client_tap.makeService(parse(client_tap.Options, [
                "--connect", f"wss://127.0.0.1:{port}/connect", "--ca-file", pki["ca"],
                "--cert", pki["client_cert"], "--key", pki["client_key"],
                "--id", "forged"]))  # not believed: the certificate decides
            client.startService()
            self.addCleanup(client.stopService)
            await eventually(lambda: top.server.clients() == ["agent-7"], timeout=10)

        return defer.Deferred.fromCoroutine(go())


class VersionTests(TestCase):
    def test_version_is_ours(self):
        """--version of either program prints remotedialer's version (twistd's own says Twisted's)."""
        import io
        import sys

        from remotedialer import __version__

        for options_class in (server_tap.Options, client_tap.Options):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            with self.assertRaises(SystemExit) as caught:
                parse(options_class, ["--version"])
            self.assertEqual(caught.exception.code, 0)
            self.assertEqual(out.getvalue(), f"remotedialer {__version__}\n")



class EarlyAnswerTests(TestCase):
    """
    The front door answers a request with a body for an unknown client
    before reading the body only where anyone may use it: otherwise the
    answer would come before the access rule and tell a stranger (or a
    token scoped to other clients) which clients are connected.
    """

    timeout = 30

    async def answer(self, argv: list[str]) -> tuple[int, bytes]:
        import treq
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        from tests.system.test_programs import start_server_program

        _top, port = await start_server_program(self, ["--listen", "tcp:0:interface=127.0.0.1", *argv])
        response = await treq.post(f"http://127.0.0.1:{port}/client/nobody/http/10.0.0.5/x", data=b"x" * 100,
                                   pool=HTTPConnectionPool(reactor, persistent=False))
        return response.code, await response.content()

    def test_tokens_required(self):
        async def go() -> None:
            tokens = os.path.abspath(self.mktemp())
            with open(tokens, "w") as f:
                f.write(f"sha256:{hash_token('t')} clients=foo\n")
            code, body = await self.answer(["--insecure-any-client", "--frontdoor-tokens-file", tokens])
            self.assertEqual(code, 407, body)
            self.assertNotIn(b"nobody", body)

        return defer.Deferred.fromCoroutine(go())

    def test_open_front_door(self):
        async def go() -> None:
            code, body = await self.answer(["--insecure-any-client", "--frontdoor-open"])
            self.assertEqual((code, body.strip()), (500, b"failed to find Session for client nobody"))

        return defer.Deferred.fromCoroutine(go())
