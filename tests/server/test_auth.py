"""
Client authentication and one key, one owner, on the in-memory network:
per-client tokens (a clients file of token hashes, Bearer tokens), a
client reconnecting with the same credential replacing its old session, a
stranger with another credential refused, and mutual TLS identities.
"""

from __future__ import annotations

import os

from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.server._auth import (
    EVERY_CLIENT,
    CertificateAuthorizer,
    ClientScope,
    TokenAuthorizer,
    TokenFile,
    hash_token,
    load_token_hashes,
    read_secret,
    token_matches,
    token_scope,
)
from remotedialer.server._server import PROBE_TIMEOUT
from remotedialer.tunnel._identity import Credentials
from tests.netsim import Network
from tests.support import Collector, Echo


def clients_file(testcase: SynchronousTestCase, entries: dict[str, str]) -> str:
    path = testcase.mktemp()
    with open(path, "w") as f:
        f.write("# client id, sha256 of its token\n\n")
        for client_id, token in entries.items():
            f.write(f"{client_id} sha256:{hash_token(token)}\n")
    return path


class TokenFileTests(SynchronousTestCase):
    def test_parse_and_reload(self) -> None:
        path = clients_file(self, {"foo": "s3cret"})
        authorizer = TokenAuthorizer(path)
        with open(path, "a") as f:
            f.write(f"bar {hash_token('other')}\n")  # the sha256: prefix is optional
        self.assertEqual(authorizer.reload(), 2)

    def test_bad_lines_name_the_line(self) -> None:
        for text, fragment in (("foo sha256:1234\n", "line 1"),
                               (f"foo {hash_token('a')}\nfoo {hash_token('b')}\n", "listed twice")):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(text)
            with self.assertRaises(ValueError) as caught:
                TokenAuthorizer(path)
            self.assertIn(fragment, str(caught.exception))

    def test_bad_reload_keeps_previous_table(self) -> None:
        path = clients_file(self, {"foo": "s3cret"})
        authorizer = TokenAuthorizer(path)
        with open(path, "w") as f:
            f.write("garbage\n")
        self.assertRaises(ValueError, authorizer.reload)
        self.assertEqual(len(authorizer._digests), 1)

    def test_read_secret(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("  tok3n \nignored\n")
        self.assertEqual(read_secret(path), "tok3n")


class TokenAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network(self)
        path = clients_file(self, {"foo": "s3cret", "bar": "b4r"})
        self.site = self.net.serve_tunnel(authorizer=TokenAuthorizer(path))
        self.server = self.site.server

    def connect(self, key: str, token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        client = self.net.client(self.site.url, key, headers=headers)
        self.net.run(0.5)
        return client

    def test_right_token(self) -> None:
        self.connect("foo", "s3cret")
        self.assertEqual(self.server.clients(), ["foo"])

    def test_wrong_missing_or_other_clients_token_refused(self) -> None:
        for key, token in (("foo", "wrong"), ("foo", None), ("foo", "b4r"), ("nobody", "s3cret")):
            self.connect(key, token)
        self.assertEqual(self.server.clients(), [])

    def test_second_process_with_same_credential_kept(self) -> None:
        """
        A second live process with the same token (two replicas of an agent
        in a rolling update): the old session answers the server's ping, so
        both are kept -- neither takes the key from the other -- and dials go
        to the newest; once it ends, the older one has them again.
        """
        echo = self.net.listen(Factory.forProtocol(Echo))
        self.connect("foo", "s3cret")
        [old] = self.server.sessions.local_sessions_of("foo")
        reader = Collector()
        self.net.connect(self.server.endpoint("foo", "tcp", echo.address), reader)
        second = self.connect("foo", "s3cret")
        self.net.run(PROBE_TIMEOUT + 1)
        sessions = self.server.sessions.local_sessions_of("foo")
        self.assertEqual(len(sessions), 2)
        new = sessions[1]
        self.assertFalse(old.superseded or old.closed)
        self.assertIs(self.server.sessions.local_session("foo"), new)
        reader.transport.write(b"still here")
        self.net.flush()
        self.assertEqual(b"".join(reader.chunks), b"still here")
        second.stopService()
        self.net.run(0.5)
        self.assertEqual(self.server.sessions.local_sessions_of("foo"), [old])
        self.assertIs(self.server.sessions.local_session("foo"), old)

    def test_silent_old_session_replaced(self) -> None:
        """
        A reconnect that leaves a half-open session behind (nothing more
        arrives from it): dials go to the new session at once, and the old
        one, silent through the probe, is replaced and ends once drained.
        """
        echo = self.net.listen(Factory.forProtocol(Echo))
        self.connect("foo", "s3cret")
        [old] = self.server.sessions.local_sessions_of("foo")
        [link] = [c for c in self.net.connections if not c.closed]
        reader = Collector()
        self.net.connect(self.server.endpoint("foo", "tcp", echo.address), reader)
        self.net.flush()
        link.server.reading = False  # the old client's bytes stop arriving
        self.connect("foo", "s3cret")
        new = self.server.sessions.local_sessions_of("foo")[1]
        self.assertIs(self.server.sessions.local_session("foo"), new)
        self.assertFalse(old.superseded)
        self.net.run(PROBE_TIMEOUT + 0.5)
        self.assertTrue(old.superseded)
        self.assertFalse(old.closed)  # its stream is still there
        reader.transport.loseConnection()
        self.net.run(0.5)
        self.assertTrue(old.closed)
        self.assertEqual(self.server.sessions.local_sessions_of("foo"), [new])

    def test_other_credential_for_live_key_refused(self) -> None:
        """
        A session for a live key proved by another credential is refused
        (409, logged); the owner's session is untouched.
        """
        path = clients_file(self, {"foo": "s3cret"})
        authorizer = TokenAuthorizer(path)
        calls = []

        class TwoTokens:
            """A stand-in for two credentials valid for one key (e.g. a rotated token)."""

            def authorize(self, request):
                calls.append(request)
                token = request.getHeader("Authorization")
                if token == "Bearer s3cret":
                    return authorizer.authorize(request)
                if token == "Bearer rotated":
                    return Credentials("foo", "token:rotated")
                return None

        from zope.interface import directlyProvides

        from remotedialer import ITunnelAuthorizer

        two = TwoTokens()
        directlyProvides(two, ITunnelAuthorizer)
        site = self.net.serve_tunnel(authorizer=two)
        self.net.client(site.url, "foo", headers={"Authorization": "Bearer s3cret"})
        self.net.run(0.5)
        [owner] = site.server.sessions.local_sessions_of("foo")
        self.net.client(site.url, "foo", headers={"Authorization": "Bearer rotated"})
        self.net.run(0.5)
        self.assertEqual(site.server.sessions.local_sessions_of("foo"), [owner])
        self.assertFalse(owner.superseded or owner.closed)


class InsecureNewestWinsTests(SynchronousTestCase):
    def test_newest_wins(self) -> None:
        """With the header authorizer (any client), the newest session of a key gets the dials."""
        net = Network(self)
        site = net.serve_tunnel()
        net.client(site.url, "foo")
        net.run(0.5)
        [old] = site.server.sessions.local_sessions_of("foo")
        net.client(site.url, "foo")
        net.run(0.5)
        new = site.server.sessions.local_session("foo")
        self.assertIsNot(new, old)
        self.assertEqual(site.server.sessions.local_sessions_of("foo"), [old, new])


class CertificateAuthorizerTests(SynchronousTestCase):
    def test_identity_from_certificate(self) -> None:
        from OpenSSL import crypto
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import implementer

        from tests.support import self_signed_certificate

        directory = self.mktemp()
        os.makedirs(directory)
        cert_path, _ = self_signed_certificate(directory, hostname="agent-7")
        with open(cert_path, "rb") as f:
            certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())

        @implementer(ISSLTransport)
        class TLS:
            def __init__(self, peer):
                self.peer = peer

            def getPeerCertificate(self):
                return self.peer

        class Request:
            def __init__(self, transport):
                self.transport = transport

            def getHeader(self, name):
                return b"forged"  # never consulted

        credentials = CertificateAuthorizer().authorize(Request(TLS(certificate)))
        self.assertEqual(credentials.client_key, "agent-7")
        self.assertTrue(credentials.fingerprint.startswith("cert:"))
        self.assertIsNone(CertificateAuthorizer().authorize(Request(TLS(None))))
        self.assertIsNone(CertificateAuthorizer().authorize(Request(object())))


class FrontDoorTokensFileTests(SynchronousTestCase):
    """
    The front-door tokens file: C{[label] sha256:<hex> [clients=<id or glob>,...]};
    a line without clients= is a token for every client (as every line was
    before scopes).
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_unscoped_lines_keep_their_meaning(self) -> None:
        path = self.write(f"# callers\n\nsha256:{hash_token('a')}\nalice {hash_token('b')}\n"
                          f"two words sha256:{hash_token('c').upper()}\n")
        tokens = TokenFile(path)
        self.assertEqual(len(tokens), 3)
        self.assertEqual(set(tokens.values()), {EVERY_CLIENT})
        self.assertEqual(load_token_hashes(path), frozenset(tokens))
        for token in (b"a", b"b", b"c"):
            self.assertIs(token_scope(token, tokens), EVERY_CLIENT)
            self.assertTrue(token_matches(token, tokens))
        self.assertIsNone(token_scope(b"d", tokens))

    def test_scoped_lines(self) -> None:
        path = self.write(f"ops sha256:{hash_token('ops')} clients=foo,bar-*\n"
                          f"sha256:{hash_token('one')} clients=foo\n"
                          f"sha256:{hash_token('all')} clients=*\n")
        tokens = TokenFile(path)
        ops = token_scope(b"ops", tokens)
        self.assertEqual(ops, ClientScope(("foo", "bar-*")))
        for key, allowed in (("foo", True), ("bar-", True), ("bar-eu.1", True), ("bar", False),
                             ("foo2", False), ("xfoo", False), ("", False)):
            self.assertEqual(ops.allows(key), allowed, key)
        self.assertTrue(token_scope(b"one", tokens).allows("foo"))
        self.assertFalse(token_scope(b"one", tokens).allows("bar-1"))
        self.assertTrue(token_scope(b"all", tokens).allows("anything at all"))
        # Plain digests (the library's frozenset) are tokens for every client.
        self.assertIs(token_scope(b"ops", frozenset(tokens)), EVERY_CLIENT)

    def test_globs_are_only_stars(self) -> None:
        scope = ClientScope(("a.b", "c?d", "[x]*"))
        self.assertTrue(scope.allows("a.b"))
        self.assertFalse(scope.allows("aXb"))
        self.assertTrue(scope.allows("c?d"))
        self.assertFalse(scope.allows("cXd"))
        self.assertTrue(scope.allows("[x]-1"))
        self.assertFalse(scope.allows("x-1"))

    def test_a_token_on_several_lines_may_use_what_all_name(self) -> None:
        digest = hash_token("t")
        tokens = TokenFile(self.write(f"sha256:{digest} clients=foo\nsha256:{digest} clients=bar\n"))
        self.assertEqual(token_scope(b"t", tokens), ClientScope(("foo", "bar")))
        tokens = TokenFile(self.write(f"sha256:{digest} clients=foo\nsha256:{digest}\n"))
        self.assertIs(token_scope(b"t", tokens), EVERY_CLIENT)

    def test_bad_lines_name_the_line(self) -> None:
        digest = hash_token("t")
        for text, fragment in (
            (f"sha256:{digest}\nclients=foo\n", "line 2: not '[label] sha256:<64 hex digits> [clients="),
            (f"sha256:{digest} clients=\n", "line 1: clients= has an empty name"),
            (f"sha256:{digest} clients=foo,,bar\n", "line 1: clients= has an empty name"),
            (f"sha256:{digest} clients=a/b\n", "line 1: clients=: a client name must not contain '/'"),
            (f"sha256:{digest} clients=foo bar\n", "line 1: not '[label]"),
            # a scope written before the digest would be read as a label: a token for every client
            (f"clients=foo sha256:{digest}\n", "line 1: not '[label]"),
            (f"alice clients=foo sha256:{digest}\n", "line 1: not '[label]"),
            ("# nothing\n", "no token hashes"),
        ):
            with self.assertRaises(ValueError) as caught:
                TokenFile(self.write(text))
            self.assertIn(fragment, str(caught.exception), text)
            self.assertNotIn(digest, str(caught.exception).split("line")[-1])

    def test_reload_reads_the_scopes_again(self) -> None:
        path = self.write(f"sha256:{hash_token('t')} clients=foo\n")
        tokens = TokenFile(path)
        self.assertFalse(token_scope(b"t", tokens).allows("bar"))
        with open(path, "w") as f:
            f.write(f"sha256:{hash_token('t')} clients=bar\n")
        self.assertEqual(tokens.reload(), 1)
        self.assertTrue(token_scope(b"t", tokens).allows("bar"))
        self.assertFalse(token_scope(b"t", tokens).allows("foo"))
        with open(path, "w") as f:
            f.write("broken\n")
        self.assertRaises(ValueError, tokens.reload)
        self.assertTrue(token_scope(b"t", tokens).allows("bar"))  # the previous ones stay
