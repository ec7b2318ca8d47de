"""
The admin endpoint (remotedialer.ops._admin) and the status it serves
(remotedialer.ops._status), over treq's StubTreq against servers and clients on
the simulated network: the JSON's shape and escaping, readiness changing
with the listener and the tunnel, metrics and the page's headers, and no
secret anywhere.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer.ops._admin import AdminEndpoint, AdminSite
from remotedialer.ops._metrics import ClientMetrics
from remotedialer.ops._status import client_status, server_status
from remotedialer.protocol._text import public_url
from tests.ops.test_metrics import _Net, _Peered

BASE = "http://admin.test"


class _Admin:
    """An AdminEndpoint and a StubTreq on its resource tree."""

    def __init__(self, testcase, endpoint):
        self.testcase = testcase
        self.endpoint = endpoint
        self.stub = StubTreq(endpoint.resource())

    def get(self, path):
        d = self.stub.get(BASE + path)
        self.stub.flush()
        response = self.testcase.successResultOf(d)
        body = self.stub.content(response)
        self.stub.flush()
        return response, self.testcase.successResultOf(body)

    def ready(self):
        response, body = self.get("/readyz")
        return response.code, body

    def status(self, path="/status"):
        response, body = self.get(path)
        self.testcase.assertEqual(response.code, 200, body)
        self.testcase.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"])
        return json.loads(body)


def server_admin(testcase, t, checks=()):
    return _Admin(testcase, AdminEndpoint(t.metrics.registry, lambda limit: server_status(t.server, limit),
                                          list(checks)))


class ServerStatusTests(SynchronousTestCase):
    def test_clients_and_sessions(self):
        """Each client with its sessions: where from, since when, streams, bytes each way, paused."""
        t = _Net(self)
        t.net.clock.advance(1000)
        t.client("foo")
        t.net.clock.advance(5)
        t.client("bar")
        stream = t.stream("foo")
        t.stream("foo")
        stream.transport.write(b"x" * 3000)
        t.net.flush()
        status = server_admin(self, t).status()
        self.assertEqual(status["role"], "server")
        self.assertEqual(status["now"], 1005)
        self.assertEqual(status["client_count"], 2)
        self.assertEqual([c["client_key"] for c in status["clients"]], ["bar", "foo"])
        foo = status["clients"][1]
        self.assertEqual((foo["streams"], foo["paused_streams"]), (2, 0))
        [session] = foo["sessions"]
        [real] = t.server.sessions.local_sessions_of("foo")
        self.assertEqual(session, {
            "session_key": str(real.session_key),
            "remote": real.remote_addr,
            "connected_since": 1000,
            "streams": 2,
            "paused_streams": 0,
            "paused_by_far_side": 0,
            "buffered_bytes": 0,
            "pending_dials": 0,
            "bytes_sent": real.bytes_sent,
            "bytes_received": real.bytes_received,
            "replaced": False,
        })
        self.assertRegex(session["remote"], r"^127\.0\.0\.1:\d+$")
        self.assertGreater(session["bytes_sent"], 3000)
        self.assertGreater(session["bytes_received"], 3000)
        self.assertEqual((foo["bytes_sent"], foo["bytes_received"]), (real.bytes_sent, real.bytes_received))
        self.assertEqual(status["peers"], [])

    def test_limit_keeps_the_busiest(self):
        t = _Net(self)
        for key in ("a", "b", "c"):
            t.client(key)
        t.stream("b")
        admin = server_admin(self, t)
        status = admin.status("/status?limit=1")
        self.assertEqual(([c["client_key"] for c in status["clients"]], status["client_count"]), (["b"], 3))
        response, body = admin.get("/status?limit=many")
        self.assertEqual((response.code, body), (400, b"limit must be a whole number of clients\n"))

    def test_peers(self):
        """Each peer: our link's state, its links to us, and the clients it announced."""
        mesh = _Peered(self)
        mesh.client_on_a("foo")
        status = server_admin(self, mesh.b).status()
        [peer] = status["peers"]
        self.assertEqual(peer["peer_id"], "A")
        self.assertEqual(peer["url"], mesh.a.url)
        self.assertEqual((peer["link"], peer["link_attempts"]), ("up", 1))
        self.assertIsNotNone(peer["link_since"])
        self.assertEqual(len(peer["incoming_sessions"]), 1)
        self.assertEqual((peer["announced_clients"], peer["announced_client_count"]), (["foo"], 1))
        self.assertEqual(status["clients"], [])

        mesh.a.kill()
        mesh.net.flush()
        [peer] = server_admin(self, mesh.b).status()["peers"]
        self.assertEqual((peer["link"], peer["incoming_sessions"], peer["announced_clients"]),
                         ("connecting", [], []))

    def test_peer_supplied_text_is_escaped(self):
        """A client id with markup and quotes: the body has no '<', '>' or '&', and decodes to the id."""
        t = _Net(self)
        key = '<img src=x onerror="alert(1)">&\''
        t.client(key)
        response, body = server_admin(self, t).get("/status")
        self.assertEqual(response.headers.getRawHeaders("X-Content-Type-Options"), ["nosniff"])
        for raw in (b"<", b">", b"&"):
            self.assertNotIn(raw, body)
        body.decode("ascii")
        self.assertEqual(json.loads(body)["clients"][0]["client_key"], key)

    def test_no_secrets(self):
        """Tokens (a client's, the peers') and URL credentials reach neither the status nor the metrics."""
        t = _Net(self, peer_id="A", peer_token="peer-secret-A")
        t.server.add_peer("B", "peer-secret-B", "ws://user:url-secret@10.0.0.2:8123/connect?token=q-secret")
        t.net.start(t.server)
        client = t.net.client(t.site.url, "foo", headers={"Authorization": "Bearer client-secret"})
        client_metrics = ClientMetrics(client)
        t.net.result(client.when_connected())
        t.stream("foo")
        admin = server_admin(self, t)
        client_admin = _Admin(self, AdminEndpoint(client_metrics.registry,
                                                  lambda limit: client_status(client)))
        for source in (admin, client_admin):
            for path in ("/status", "/metrics", "/"):
                self.assertNotIn(b"secret", source.get(path)[1], path)
        [peer] = admin.status()["peers"]
        self.assertEqual(peer["url"], "ws://10.0.0.2:8123/connect")

    def test_public_url(self):
        self.assertEqual(public_url("wss://u:p@[::1]:8443/connect?x=1#f"), "wss://[::1]:8443/connect")
        self.assertEqual(public_url("ws://host/connect"), "ws://host/connect")
        self.assertEqual(public_url("ws://host:notaport/"), "(unparsable URL)")


class ClientStatusTests(SynchronousTestCase):
    def test_tunnel(self):
        """The client's tunnel: state, server URL, since, streams."""
        t = _Net(self)
        t.net.clock.advance(50)
        client = t.net.client(t.site.url, "foo", retry_policy=lambda attempt: 0.5)
        metrics = ClientMetrics(client)
        def tunnel_up():
            return None if client.ready else "the tunnel is not established"

        def status(limit):
            return client_status(client)

        admin = _Admin(self, AdminEndpoint(metrics.registry, status, [tunnel_up]))
        response, body = admin.get("/readyz")
        self.assertEqual((response.code, body), (503, b"not ready: the tunnel is not established\n"))
        t.net.result(client.when_connected())
        t.stream("foo")
        status = admin.status()
        self.assertEqual((status["role"], status["client_key"], status["now"]), ("client", "foo", 50))
        tunnel = status["tunnel"]
        self.assertEqual((tunnel["state"], tunnel["url"], tunnel["since"]), ("connected", t.site.url, 50))
        self.assertEqual((tunnel["attempts"], tunnel["opened"], tunnel["session"]["streams"]), (1, 1, 1))
        self.assertEqual(admin.ready(), (200, b"ready\n"))

        t.site.kill()
        t.net.flush()
        status = admin.status()
        self.assertEqual((status["tunnel"]["state"], status["tunnel"]["session"]), ("connecting", None))
        self.assertEqual(admin.get("/readyz")[0].code, 503)
        client.stopService()
        t.net.flush()
        self.assertEqual(admin.status()["tunnel"]["state"], "stopped")


class EndpointTests(SynchronousTestCase):
    def test_readyz_follows_the_listener(self):
        """The server's check: its tunnel factory listens (Factory.numPorts)."""
        t = _Net(self)
        site = Site(Resource())

        def listening():
            return None if site.numPorts else "the tunnel listener is not listening"

        admin = server_admin(self, t, [listening])
        self.assertEqual(admin.get("/readyz")[0].code, 503)
        listener = t.net.listen(site, "127.0.0.1:8200")
        self.assertEqual(admin.ready(), (200, b"ready\n"))
        listener.stopListening()
        response, body = admin.get("/readyz")
        self.assertEqual((response.code, body), (503, b"not ready: the tunnel listener is not listening\n"))

    def test_healthz_and_metrics(self):
        t = _Net(self)
        t.client("foo")
        admin = server_admin(self, t, [lambda: "never"])
        response, body = admin.get("/healthz")
        self.assertEqual((response.code, body), (200, b"ok\n"))
        response, body = admin.get("/metrics")
        self.assertEqual(response.headers.getRawHeaders("Content-Type"),
                         ["text/plain; version=0.0.4; charset=utf-8"])
        self.assertIn(b'session_server_total_add_websocket_session{clientkey="foo",peer="false"} 1.0\n', body)
        self.assertEqual(admin.get("/nothing")[0].code, 404)
        response, _ = admin.stub.request("POST", BASE + "/status"), None
        admin.stub.flush()
        self.assertEqual(self.successResultOf(response).code, 405)

    def test_gzip_when_asked(self):
        """/metrics and /status are gzipped for a scraper that accepts it (treq would decode it unseen)."""
        t = _Net(self)
        t.client("foo")
        agent = RequestTraversalAgent(server_admin(self, t).endpoint.resource())
        for path in ("/metrics", "/status"):
            d = agent.request(b"GET", (BASE + path).encode(), Headers({"Accept-Encoding": ["gzip"]}))
            agent.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.headers.getRawHeaders("Content-Encoding"), ["gzip"])
            body = readBody(response)
            agent.flush()
            self.assertIn(b"foo", gzip.decompress(self.successResultOf(body)))

    def test_extra_sections_and_checks(self):
        """Other parts (forwarders...) add status sections and readiness checks; one failing says so."""
        t = _Net(self)
        admin = server_admin(self, t)
        admin.endpoint.status_sections["forwarders"] = lambda: [{"listen": "tcp:9000", "streams": 2}]
        admin.endpoint.status_sections["broken"] = lambda: 1 / 0
        admin.endpoint.readiness_checks.append(lambda: "draining")
        status = admin.status()
        self.assertEqual(status["forwarders"], [{"listen": "tcp:9000", "streams": 2}])
        self.assertEqual(status["broken"], {"error": "this section failed; see the log"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(admin.get("/readyz")[1], b"not ready: draining\n")

    def test_page(self):
        """The page: no external asset, and a CSP that allows exactly its own script and style."""
        t = _Net(self)
        response, body = server_admin(self, t).get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["text/html; charset=utf-8"])
        [policy] = response.headers.getRawHeaders("Content-Security-Policy")
        for tag in (b"script", b"style"):
            [inline] = re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), body, re.DOTALL)
            digest = base64.b64encode(hashlib.sha256(inline).digest()).decode()
            self.assertIn(f"{tag.decode()}-src 'sha256-{digest}'", policy)
        self.assertIn("default-src 'none'", policy)
        self.assertNotRegex(body, rb"(src|href)=")
        self.assertNotIn(b"innerHTML", body)
        self.assertNotIn(b"http://", body.replace(b"http://www.w3.org/2000/svg", b""))

    def test_site_logs_no_requests(self):
        t = _Net(self)
        site = AdminSite(AdminEndpoint(t.metrics.registry, lambda limit: {}))
        self.assertFalse(site.displayTracebacks)
        self.assertFalse(site.noisy)
        self.assertIsNone(site.log(None))
