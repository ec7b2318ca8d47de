"""
The client and the server's peer links through an HTTP CONNECT proxy on
the simulated network: wss:// verified end to end through the CONNECT,
the proxy's view (the CONNECT line, the credentials), NO_PROXY going
direct, streams over the tunnel.
"""

from __future__ import annotations

import os

from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.client._proxyrule import ProxyRule
from tests.connectproxy import RecordingProxy
from tests.netsim import Network
from tests.support import Collector, Echo, self_signed_certificate

BASIC_AGENT = "Basic YWdlbnQ6czNjcmV0"  # agent:s3cret


class ThroughProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network(self)
        self.proxy = RecordingProxy(self.net.reactor, credentials=("agent", "s3cret"))
        self.net.listen(self.proxy, "10.0.0.9:3128")
        self.net.hosts["tunnel.sim"] = "10.0.0.1"

    def tls_site(self):
        directory = self.mktemp()
        os.makedirs(directory)
        cert_path, key_path = self_signed_certificate(directory, "tunnel.sim")
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
        site = self.net.serve_tunnel("tunnel.sim:8443", tls=PrivateCertificate.loadPEM(cert + key).options())
        return site, Certificate.loadPEM(cert)

    def assert_streams_work(self, site) -> None:
        target = self.net.listen(Factory.forProtocol(Echo))
        reader = self.net.connect(site.server.endpoint("foo", "tcp", target.address), Collector())
        reader.transport.write(b"through the proxy")
        self.net.flush()
        reader.transport.loseConnection()
        self.net.flush()
        self.assertEqual(self.successResultOf(reader.done), b"through the proxy")

    def test_wss_through_the_environments_proxy(self) -> None:
        """
        HTTPS_PROXY (not HTTP_PROXY) carries wss://; the proxy sees CONNECT
        with the server's name and the credentials; TLS inside it checks
        the server's certificate for that name.
        """
        site, ca = self.tls_site()
        rule = ProxyRule.from_environment({"HTTPS_PROXY": "http://agent:s3cret@10.0.0.9:3128",
                                           "HTTP_PROXY": "http://10.0.0.8:1"})
        client = self.net.client(site.url, proxy=rule, trust_root=ca)
        self.net.result(client.when_connected())
        self.assertEqual(self.proxy.requests, ["CONNECT tunnel.sim:8443 HTTP/1.1"])
        self.assertEqual(self.proxy.authorizations, [BASIC_AGENT])
        self.assert_streams_work(site)

    def test_wss_through_the_proxy_still_verifies(self) -> None:
        """Without the server's CA the proxy makes no difference: refused, the TLS reason logged."""
        site, _ = self.tls_site()
        rule = ProxyRule.fixed("http://agent:s3cret@10.0.0.9:3128")
        client = self.net.client(site.url, proxy=rule, retry_policy=lambda n: 1.0)
        self.net.run(0.5)
        self.assertIsNone(client.session)
        self.assertEqual(self.proxy.relayed, 1)
        self.assertEqual(site.server.clients(), [])

    def test_ws_through_an_explicit_proxy(self) -> None:
        site = self.net.serve_tunnel("10.0.0.1:8123")
        client = self.net.client(site.url, proxy="http://agent:s3cret@10.0.0.9:3128")
        self.net.result(client.when_connected())
        self.assertEqual(self.proxy.requests, ["CONNECT 10.0.0.1:8123 HTTP/1.1"])
        self.assert_streams_work(site)

    def test_no_proxy_goes_direct(self) -> None:
        site, ca = self.tls_site()
        rule = ProxyRule.from_environment({"HTTPS_PROXY": "http://agent:s3cret@10.0.0.9:3128",
                                           "no_proxy": "localhost,.sim"})
        client = self.net.client(site.url, proxy=rule, trust_root=ca)
        self.net.result(client.when_connected())
        self.assertEqual(self.proxy.requests, [])
        self.assert_streams_work(site)

    def test_reconnects_through_the_proxy(self) -> None:
        """A tunnel through the proxy that drops is redialed through it."""
        site = self.net.serve_tunnel("10.0.0.1:8123")
        client = self.net.client(site.url, proxy="http://agent:s3cret@10.0.0.9:3128",
                                 retry_policy=lambda n: 0.5)
        self.net.result(client.when_connected())
        site.server.sessions.local_session("foo")._drop()
        self.net.run(1.0)
        self.assertIsNotNone(client.session)
        self.assertEqual(self.proxy.requests, ["CONNECT 10.0.0.1:8123 HTTP/1.1"] * 2)

    def test_peer_links_through_the_proxy(self) -> None:
        """A server's links to its peers go through its peer proxy, and carry dials as ever."""
        proxy = "http://agent:s3cret@10.0.0.9:3128"
        sites = {name: self.net.serve_tunnel(f"10.0.0.{i}:8123", peer_id=name, peer_token=f"token-{name}",
                                             peer_proxy=proxy)
                 for i, name in enumerate("AB", 1)}
        sites["A"].server.add_peer("B", "token-B", sites["B"].url)
        sites["B"].server.add_peer("A", "token-A", sites["A"].url)
        for site in sites.values():
            self.net.start(site.server)
        self.net.flush()
        self.assertEqual(sorted(self.proxy.requests),
                         ["CONNECT 10.0.0.1:8123 HTTP/1.1", "CONNECT 10.0.0.2:8123 HTTP/1.1"])
        client = self.net.client(sites["A"].url)
        self.net.result(client.when_connected())
        self.net.flush()
        self.assertIn("foo", sites["B"].server.sessions.reachable_clients())
        self.assert_streams_work(sites["B"])
