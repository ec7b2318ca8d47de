"""
Every failed attempt to open the tunnel is logged once, in one line, with
its reason and the wait before the next (rounded), on the simulated
network: refused, a name that does not resolve, the server's answer to
the upgrade, TLS, a proxy's refusal, failover to the next server.  Twisted's
"Scheduling retry N to connect ... in 0.8236611718670794 seconds" is gone,
and so are Autobahn's own lines about the same events.
"""

from __future__ import annotations

import os
import re

from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.client._proxyrule import ProxyRule
from tests.connectproxy import RecordingProxy
from tests.netsim import Network
from tests.support import self_signed_certificate

#: What a line must never hold: a repr, a traceback, an unrounded float.
REPR = re.compile(r"<[A-Za-z_.]+( |>)|Failure|Error\(|Traceback|\d\.\d{3,}")


class LogCapture:
    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        """The client's lines (its own, Autobahn's for its WebSocket, Twisted's for its connections)."""
        return [formatEvent(e) for e in self.events
                if (level is None or e.get("log_level") == level)
                and self._clients(e.get("log_namespace", ""))]

    @staticmethod
    def _clients(namespace: str) -> bool:
        return namespace.startswith(("remotedialer.client", "twisted.application", "twisted.internet")) or (
            "Client" in namespace)

    def failed(self) -> list[dict]:
        return [e for e in self.events if "failed:" in e.get("log_format", "") and "reason" in e]


class AttemptLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network(self)
        self.log = LogCapture(self)

    def assert_lines(self, expected: str, count: int) -> list[dict]:
        """C{count} failure lines, each exactly C{expected}; nothing else warns; no repr anywhere."""
        failed = self.log.failed()
        self.assertEqual([formatEvent(e) for e in failed], [expected] * count)
        self.assertEqual(self.log.lines(LogLevel.warn), [expected] * count)
        for line in self.log.lines():
            self.assertNotIn("Scheduling retry", line)
            self.assertIsNone(REPR.search(line), line)
        return failed

    def test_refused(self) -> None:
        self.net.client("ws://10.0.0.1:8123/connect", retry_policy=lambda n: 0.8236611718670794)
        self.net.run(2.0)
        [first, *_] = self.assert_lines(
            "tunnel to ws://10.0.0.1:8123/connect failed: connection to 10.0.0.1:8123 refused; "
            "retrying in 0.8 s", 2)
        self.assertEqual((first["retry_in"], first["url"], first["client_key"]),
                         (0.8, "ws://10.0.0.1:8123/connect", "foo"))

    def test_name_does_not_resolve(self) -> None:
        self.net.client("wss://nowhere.sim/connect", retry_policy=lambda n: 12.34)
        self.net.run(1.0)
        self.assert_lines("tunnel to wss://nowhere.sim/connect failed: name resolution failed for "
                          "nowhere.sim; retrying in 12 s", 1)

    def test_upgrade_refused(self) -> None:
        site = self.net.serve_tunnel("10.0.0.1:8123")
        self.net.client(site.url, key=None, retry_policy=lambda n: 1.0)  # no X-Tunnel-ID: 401
        self.net.run(1.5)
        self.assert_lines("tunnel to ws://10.0.0.1:8123/connect failed: server answered 401 Unauthorized; "
                          "retrying in 1.0 s", 2)

    def _tls_site(self, hostname: str):
        directory = self.mktemp()
        os.makedirs(directory)
        cert_path, key_path = self_signed_certificate(directory, hostname)
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
        self.net.hosts["tunnel.sim"] = "10.0.0.1"
        self.net.hosts["other.sim"] = "10.0.0.1"
        site = self.net.serve_tunnel("tunnel.sim:8443", tls=PrivateCertificate.loadPEM(cert + key).options())
        return site, Certificate.loadPEM(cert)

    def test_tls_untrusted(self) -> None:
        site, _ = self._tls_site("tunnel.sim")
        self.net.client(site.url, retry_policy=lambda n: 0.5)
        self.net.run(0.7)
        self.assert_lines("tunnel to wss://tunnel.sim:8443/connect failed: TLS: certificate verify failed; "
                          "retrying in 0.5 s", 2)

    def test_tls_wrong_name(self) -> None:
        site, ca = self._tls_site("tunnel.sim")
        self.net.client("wss://other.sim:8443/connect", retry_policy=lambda n: 0.5, trust_root=ca)
        self.net.run(0.2)
        self.assert_lines("tunnel to wss://other.sim:8443/connect failed: TLS: the server's certificate is "
                          "not valid for other.sim; retrying in 0.5 s", 1)

    def test_proxy_refuses(self) -> None:
        site = self.net.serve_tunnel("10.0.0.1:8123")
        proxy = RecordingProxy(self.net.reactor, credentials=("agent", "s3cret"))
        self.net.listen(proxy, "10.0.0.9:3128")
        rule = ProxyRule.from_environment({"HTTP_PROXY": "http://agent:wrong@10.0.0.9:3128"})
        self.net.client(site.url, retry_policy=lambda n: 2.0, proxy=rule)
        self.net.run(1.0)
        self.assert_lines("tunnel to ws://10.0.0.1:8123/connect failed: proxy 10.0.0.9:3128 answered 407 "
                          "Proxy Authentication Required; retrying in 2.0 s", 1)
        self.assertEqual(proxy.refused, 1)

    def test_failover_names_the_next_server(self) -> None:
        b = self.net.serve_tunnel("10.0.0.2:8123")
        client = self.net.client(["ws://10.0.0.1:8123/connect", b.url], retry_policy=lambda n: 0.25)
        self.net.run(0.4)
        self.assert_lines("tunnel to ws://10.0.0.1:8123/connect failed: connection to 10.0.0.1:8123 refused; "
                          "trying ws://10.0.0.2:8123/connect in 0.2 s", 1)
        self.net.run(0.2)
        self.assertIsNotNone(client.session)

    def test_attempts_count_since_the_last_usable_tunnel(self) -> None:
        """Failures count up the backoff; a usable tunnel resets it; its loss waits policy(1)."""
        calls: list[int] = []

        def policy(attempt: int) -> float:
            calls.append(attempt)
            return 1.0

        site = self.net.serve_tunnel("10.0.0.1:8123")
        site.stop_listening()
        client = self.net.client(site.url, retry_policy=policy)
        self.net.run(2.0)  # refused twice (a refusal is heard 0.3 s after the attempt)
        site.start_listening()
        self.net.run(1.0)  # up
        self.assertIsNotNone(client.session)
        site.server.sessions.local_session("foo")._drop()
        self.net.flush()
        self.assertEqual(calls, [1, 2, 1])
        self.assertEqual(len(self.log.failed()), 2)  # (the drop is the "down after" line, not a failure)


class RestartTests(SynchronousTestCase):
    def test_started_again_before_the_stop_is_over(self) -> None:
        """
        Stopped, then started before the old connection has closed: the old
        connection's end reaches the old redialer (whose stop then fires), and
        one new tunnel comes up, not two.
        """
        net = Network(self)
        site = net.serve_tunnel("10.0.0.1:8123")
        client = net.client(site.url, retry_policy=lambda n: 1.0)
        net.run(1.0)
        self.assertIsNotNone(client.session)
        stopped = client.stopService()
        self.assertNoResult(stopped)  # (the close is under way on the network)
        client.startService()
        net.run(5.0)
        self.successResultOf(stopped)
        self.assertIsNotNone(client.session)
        self.assertEqual(len(site.server.sessions.local_sessions()), 1)
        self.assertEqual(client.opened, 2)
