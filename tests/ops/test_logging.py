"""
Logs that operators read and collectors parse: one line when a tunnel comes
up and one when it drops (reason, lifetime, fields), on the server for
client sessions and peer links and on the client; JSON lines; the
--log-format switch under twistd.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from remotedialer import json_log_observer
from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from remotedialer._tap._logging import _TextLog, text_log_observer
from remotedialer.ops._jsonlog import event_as_json_line
from remotedialer.protocol._text import duration
from tests.netsim import Network


def capture(testcase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def lines(events, fragment: str) -> list[dict]:
    """The events whose format contains C{fragment}."""
    return [e for e in events if fragment in str(e.get("log_format", ""))]


class _Opaque:
    def __repr__(self) -> str:
        return "<_Opaque object at 0xdeadbeef>"


class _SessionLike:
    client_key = "foo"
    session_key = 42

    def __repr__(self) -> str:
        return "<Session client foo/42>"


class JSONLinesTests(SynchronousTestCase):
    def _line(self, **kwargs) -> dict:
        out = io.StringIO()
        observer = json_log_observer(out)
        log = Logger(namespace="remotedialer.test", observer=observer)
        log.emit(kwargs.pop("level", LogLevel.info), kwargs.pop("format"), **kwargs)
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.endswith("\n"))
        return json.loads(text)

    def test_fields_level_namespace_text(self):
        record = self._line(format="client {client_key} session {session_id} up from {remote_addr}",
                            client_key="foo", session_id=7, remote_addr="127.0.0.1:5000",
                            level=LogLevel.warn)
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "remotedialer.test")
        self.assertEqual(record["text"], "client foo session 7 up from 127.0.0.1:5000")
        self.assertEqual((record["client_key"], record["session_id"], record["remote_addr"]),
                         ("foo", 7, "127.0.0.1:5000"))
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertFalse([key for key in record if key.startswith("log_")])

    def test_no_reprs(self):
        """An object field is left out (a session gives its key and id), never its repr."""
        out = io.StringIO()
        log = Logger(namespace="t", observer=json_log_observer(out))
        log.info("thing happened", thing=_Opaque(), session=_SessionLike())
        text = out.getvalue()
        self.assertNotIn("0x", text)
        self.assertNotIn("<", text)
        record = json.loads(text)
        self.assertNotIn("thing", record)
        self.assertEqual((record["client_key"], record["session_id"]), ("foo", 42))

    def test_failure(self):
        out = io.StringIO()
        log = Logger(namespace="t", observer=json_log_observer(out))
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("it broke", Failure())
        record = json.loads(out.getvalue())
        self.assertEqual(record["level"], "critical")
        self.assertIn("division by zero", record["error"])
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual(out.getvalue().count("\n"), 1)

    def test_control_characters_stay_escaped(self):
        line = event_as_json_line({"log_format": "{x}", "x": "a\nb\x1b", "log_time": 0.0,
                                   "log_level": LogLevel.info, "log_namespace": "t"})
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line)["x"], "a\nb\x1b")

    def test_duration(self):
        self.assertEqual([duration(s) for s in (0.42, 12.7, 303, 7440)],
                         ["0.4 s", "12 s", "5 min 3 s", "2 h 4 min"])


class TunnelLinesTests(SynchronousTestCase):
    """One line up, one line down, with the reason and how long the tunnel lived."""

    def setUp(self):
        self.net = Network(self)
        self.events = capture(self)

    def test_client_session_up_and_down(self):
        net = self.net
        site = net.serve_tunnel("10.0.0.1:8123")
        client = net.client(site.url, "foo", retry_policy=lambda attempt: 60.0)
        session = net.result(client.when_connected())
        up = lines(self.events, "up from")
        self.assertEqual(len(up), 1)
        self.assertEqual((up[0]["kind"], up[0]["client_key"]), ("client", "foo"))
        self.assertIsInstance(up[0]["session_id"], int)
        self.assertRegex(up[0]["remote_addr"], r"^127\.0\.0\.1:\d+$|^[\d.]+:\d+$")
        client_up = lines(self.events, "tunnel to {url} up")
        self.assertEqual(len(client_up), 1)
        self.assertEqual(client_up[0]["url"], site.url)

        net.run(125.0)  # it lives two minutes...
        site.kill()  # ...then the server dies
        net.flush()
        down = lines(self.events, "down after")
        server_down = [e for e in down if e.get("kind") == "client"]
        self.assertEqual(len(server_down), 1)
        self.assertEqual(server_down[0]["session_id"], up[0]["session_id"])
        self.assertAlmostEqual(server_down[0]["lived"], 125.0, delta=1.0)
        self.assertIn("2 min 5 s", server_down[0]["log_format"].format(**server_down[0]))
        client_down = lines(self.events, "tunnel to {url} down")
        self.assertEqual(len(client_down), 1)
        self.assertAlmostEqual(client_down[0]["lived"], 125.0, delta=1.0)
        self.assertTrue(client_down[0]["reason"])
        self.assertEqual(client_down[0]["client_key"], "foo")
        self.assertNotIn("session_id", client_down[0])  # the server's id is not the client's to tell
        self.assertTrue(session.closed)

    def test_url_secrets_not_logged(self):
        """A tunnel URL's user information and query (they may carry a token) stay out of the lines."""
        net = self.net
        site = net.serve_tunnel("10.0.0.1:8123")
        url = site.url.replace("ws://", "ws://user:s3cret@") + "?token=s3cret"
        client = net.client(url, "foo", retry_policy=lambda attempt: 60.0)
        net.result(client.when_connected())
        [up] = lines(self.events, "tunnel to {url} up")
        self.assertEqual(up["url"], site.url)
        self.assertEqual([e for e in self.events if "s3cret" in formatEvent(e)], [])

    def test_reason_of_idle_timeout(self):
        """A tunnel dropped for silence says so, on the server's line."""
        net = self.net
        site = net.serve_tunnel("10.0.0.1:8123", idle_timeout=10.0)
        client = net.client(site.url, "foo", ping_interval=5.0, retry_policy=lambda attempt: 60.0)
        net.result(client.when_connected())
        connection = net.connections[-1]
        connection.client.pauseProducing()  # the client stops reading...
        connection.server.pauseProducing()  # ...and the server hears nothing
        net.run(11.0)
        down = [e for e in lines(self.events, "down after") if e.get("kind") == "client"]
        self.assertEqual(len(down), 1, down)
        self.assertEqual(down[0]["reason"], "no frame for 10 s")

    def test_peer_link_up_and_down(self):
        net = self.net
        a = net.serve_tunnel("10.0.0.1:8123", peer_id="A", peer_token="ta")
        b = net.serve_tunnel("10.0.0.2:8123", peer_id="B", peer_token="tb")
        a.server.add_peer("B", "tb", b.url)
        b.server.add_peer("A", "ta", a.url)
        net.start(a.server)
        net.start(b.server)
        net.flush()
        self.assertEqual(len(lines(self.events, "peer {peer}: link to {url} up")), 2)
        peer_up = [e for e in lines(self.events, "up from") if e.get("kind") == "peer"]
        self.assertEqual(sorted(e["peer"] for e in peer_up), ["A", "B"])
        net.run(3.0)
        a.server.remove_peer("B")
        net.flush()
        down = [e for e in lines(self.events, "down after") if e.get("kind") == "peer"]
        self.assertTrue(down)
        self.assertTrue(any("peer B removed" in e["reason"] for e in down), down)


class LogFormatOptionTests(SynchronousTestCase):
    """--log-format json is twistd's --logger remotedialer.json_log_observer, with its mistakes caught."""

    def setUp(self):
        saved = dict(vars(_TextLog))  # (the text log's destination, taken as options are parsed)
        names = ("logfile", "syslog", "prefix", "nodaemon")
        self.addCleanup(lambda: [setattr(_TextLog, n, saved[n]) for n in names if n in saved])

    def twistd(self, argv):
        config = ServerOptions()
        config.parseOptions(argv)
        return config

    def test_json_under_twistd(self):
        for program, extra in (("remotedialer-server", ["--insecure-any-client"]),
                               ("remotedialer-client", [])):
            config = self.twistd(["-n", "--pidfile=", program, *extra, "--log-format", "json"])
            self.assertIs(config["logger"], json_log_observer)
            self.assertEqual(config.subOptions["log-format"], "json")

    def test_text_is_twistds_own_made_safe(self):
        """
        The text format (asked for, or the default) is twistd's own text log,
        to where twistd's own options say, through the safety filter
        (remotedialer.ops._logfilter): the programs name its factory as twistd's --logger.
        """
        for program, extra in (("remotedialer-server", ["--insecure-any-client"]),
                               ("remotedialer-client", [])):
            for format_option in (["--log-format", "text"], []):
                config = self.twistd(["--logfile", "x.log", "--pidfile=", program, *extra, *format_option])
                self.assertIs(config["logger"], text_log_observer)
                self.assertEqual(_TextLog.logfile, "x.log")
                self.assertFalse(_TextLog.nodaemon)

    def test_daemon_to_standard_output_refused(self):
        with self.assertRaises(usage.UsageError) as caught:
            self.twistd(["--logfile", "-", "remotedialer-client"])
        self.assertIn("run twistd with -n", str(caught.exception))

    def test_twistd_logger_option(self):
        config = self.twistd(["-n", "--logger", "remotedialer.json_log_observer", "remotedialer-client"])
        self.assertIs(config["logger"], json_log_observer)

    def test_mistakes(self):
        cases = [
            (["-n", "remotedialer-client", "--log-format", "xml"], "--log-format must be text or json"),
            (["remotedialer-client", "--log-format", "json"], "run twistd with -n"),
            (["-n", "--logfile", "x.log", "remotedialer-client", "--log-format", "json"], "drop --logfile"),
            (["-n", "--logger", "remotedialer.json_log_observer", "remotedialer-client", "--log-format",
              "json"], "exclude each other"),
        ]
        for argv, expected in cases:
            with self.assertRaises(usage.UsageError) as caught:
                self.twistd(argv)
            self.assertIn(expected, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_outside_twistd(self):
        options = client_tap.Options()
        options.parseOptions(["--log-format", "json"])
        self.assertEqual(options["log-format"], "json")
        options = server_tap.Options()
        options.parseOptions(["--insecure-any-client", "--log-format", "json"])
        self.assertEqual(options["log-format"], "json")
