"""
The last line of defence of the programs' logs (remotedialer.ops._logfilter),
in both formats: no line over 2 KiB (cut, with a marker), no control
character (escaped), no request's or object's repr; Autobahn's and
twisted.web's texts about a caller's input escaped and cut as ours are;
the events twisted.web and Autobahn really log, made from real objects.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import NoResource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from remotedialer._tap import _logging
from remotedialer.ops._jsonlog import event_as_json_line
from remotedialer.ops._logfilter import (
    MAX_LINE_BYTES,
    SafeLogObserver,
    cut_bytes,
    safe_event,
    safe_text_observer,
    text_line,
)

#: What the fuzz test looks for in a log line (tests/system/test_fuzz.py).
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
REPR = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+")


def request(uri: bytes, method: bytes = b"HEAD") -> Request:
    made = Request(DummyChannel())
    made.method, made.uri, made.clientproto = method, uri, b"HTTP/1.1"
    return made


def emitted(namespace: str, format: str, level: LogLevel = LogLevel.info, **fields: object) -> dict:
    """The event a Logger of C{namespace} emits (with its time, level, source...)."""
    events: list[dict] = []
    Logger(namespace=namespace, observer=events.append).emit(level, format, **fields)
    return events[0]


def failure_event(message: str) -> dict:
    events: list[dict] = []
    try:
        raise ValueError(message)
    except ValueError:
        Logger(namespace="remotedialer.test", observer=events.append).failure("it failed: {x}", Failure(),
                                                                              x="\x1bred")
    return events[0]


class CheckedLines:
    def assert_safe(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            self.assertLessEqual(len(line.encode("utf-8")), MAX_LINE_BYTES, line[:100])  # type: ignore[attr-defined]
            self.assertIsNone(CONTROL.search(line.removeprefix("\t")), line[:200])  # type: ignore[attr-defined]
            self.assertIsNone(REPR.search(line), line[:200])  # type: ignore[attr-defined]


#: The events the fuzz test found in the server's log, as their loggers make them.
def twisted_web_head_warning(uri: bytes) -> dict:
    return emitted("twisted.web.server.Request", "Warning: HEAD request {slf} for resource {resrc} is "
                   "returning a message body. I think I'll eat it.", slf=request(uri), resrc=NoResource())


def autobahn_events() -> list[dict]:
    reason = 'bad Sec-WebSocket-Key (length must be 24 ASCII chars) "' + "A" * 5000 + '"'
    c1 = "illegal extension parameter '\u00e2\u009b' for extension 'permessage-deflate'"
    return [
        emitted("autobahn.twisted.websocket.WebSocketServerProtocol", "failing WebSocket opening handshake "
                "('{reason}')", reason=reason),
        emitted("autobahn.twisted.websocket.WebSocketServerProtocol", "dropping connection to peer {peer} "
                "with abort={abort}: {reason}", LogLevel.warn, peer="tcp4:127.0.0.1:5000", abort=False,
                reason=c1),
    ]


class SafeEventTests(CheckedLines, SynchronousTestCase):
    def test_head_warning_long_uri(self) -> None:
        """twisted.web's HEAD warning: the request as method and URI, cut; the resource without address."""
        text = formatEvent(safe_event(twisted_web_head_warning(b"/nothing?" + b"a" * 15000)))
        self.assertTrue(text.startswith("Warning: HEAD request <Request HEAD /nothing?aaa"), text)
        self.assertIn("more characters)> for resource <twisted.web.resource.", text)
        self.assertLess(len(text), 600)
        self.assert_safe(text)

    def test_head_warning_not_ascii_uri(self) -> None:
        """A URI with a byte that is not ASCII: its repr would fail (MESSAGE LOST); its text does not."""
        event = twisted_web_head_warning(b"/nope\x9b")
        self.assertIn("MESSAGE LOST", formatEvent(event))  # (as twisted.web logs it)
        text = formatEvent(safe_event(event))
        self.assertIn("<Request HEAD /nope\\x9b>", text)
        self.assertNotIn("MESSAGE LOST", text)
        self.assert_safe(text)

    def test_autobahn_values_escaped_and_cut_as_ours(self) -> None:
        key, c1 = (formatEvent(safe_event(e)) for e in autobahn_events())
        self.assertIn('"AAAA', key)
        self.assertRegex(key, r'"A{70,128}\.\.\.\(\d+ more characters\)')  # (cut at 128, as printable cuts)
        self.assertLess(len(key), 300)
        self.assertIn("'\u00e2\\x9b'", c1)
        self.assert_safe(key)
        self.assert_safe(c1)

    def test_our_events_keep_their_fields(self) -> None:
        event = emitted("remotedialer.test", "client {client_key} up: {reason}", client_key="foo",
                        reason="a\nb\x1b[31m")
        safe = safe_event(event)
        self.assertEqual(formatEvent(safe), "client foo up: a\\nb\\x1b[31m")
        self.assertEqual((safe["client_key"], safe["reason"]), ("foo", "a\nb\x1b[31m"))  # (fields kept)
        self.assertEqual(event["log_format"], "client {client_key} up: {reason}")  # (the event unchanged)

    def test_reprs_replaced(self) -> None:
        class Thing:
            pass

        text = formatEvent(safe_event(emitted("remotedialer.test", "{a} and {b}", a=Thing(), b=object())))
        self.assertRegex(text, r"^<[\w.<>]+\.Thing> and <object>$")

    def test_unformattable(self) -> None:
        class Broken:
            def __repr__(self) -> str:
                raise UnicodeDecodeError("ascii", b"\x9b", 0, 1, "no")

        text = formatEvent(safe_event(emitted("remotedialer.test", "{x!r}", x=Broken())))
        self.assertEqual(text, "(an event that could not be formatted: {x!r})")

    def test_cut_bytes(self) -> None:
        self.assertEqual(cut_bytes("abc", 3), "abc")
        cut = cut_bytes("\u00e9" * 3000, 2048)
        self.assertLessEqual(len(cut.encode()), 2048)
        self.assertTrue(cut.endswith(" more bytes)"))
        cut = cut_bytes("x" * 5000 + "END", 100, keep_end=True)
        self.assertTrue(cut.endswith("xEND") and cut.startswith("(cut: "), cut)
        self.assertLessEqual(len(cut.encode()), 100)


class TextFormatTests(CheckedLines, SynchronousTestCase):
    def test_every_event_of_the_fuzz(self) -> None:
        events = [twisted_web_head_warning(b"/nothing?" + b"a" * 15000), twisted_web_head_warning(b"/x\x9b"),
                  *autobahn_events(), failure_event("\x1b[2J" + "E" * 5000),
                  emitted("remotedialer.test", "mid-body: {r}", r="\x00\x1b[31m\u009b" + "A" * 5000)]
        for event in events:
            line = text_line(event)
            assert line is not None
            self.assert_safe(line)

    def test_classic_format(self) -> None:
        line = text_line(emitted("remotedialer.test", "hello {who}", who="you"))
        assert line is not None
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                               r"\[remotedialer\.test#info\] hello you\n$")

    def test_traceback_lines_kept_each_bounded(self) -> None:
        line = text_line(failure_event("\x1b[2J" + "E" * 5000))
        assert line is not None
        lines = line.rstrip("\n").split("\n")
        self.assertIn("it failed: \\x1bred", lines[0])
        self.assertEqual(lines[1], "\tTraceback (most recent call last):")
        self.assertTrue(lines[-2].startswith("\tbuiltins.ValueError: \\x1b[2JEEE"), lines[-2][:100])
        self.assertIn("more bytes)", lines[-2])
        self.assertEqual(lines[-1], "\t")  # (twisted's classic format ends a traceback so)

    def test_observer_writes_safe_lines(self) -> None:
        out = io.StringIO()
        observer = safe_text_observer(out)
        for event in autobahn_events():
            observer(event)
        self.assertEqual(out.getvalue().count("\n"), 2)
        self.assert_safe(out.getvalue())

    def test_safe_observer_wraps_any(self) -> None:
        seen: list[dict] = []
        SafeLogObserver(seen.append)(twisted_web_head_warning(b"/x\x9b"))
        self.assertIn("<Request HEAD /x\\x9b>", formatEvent(seen[0]))


class JSONFormatTests(CheckedLines, SynchronousTestCase):
    def test_every_event_of_the_fuzz(self) -> None:
        events = [twisted_web_head_warning(b"/nothing?" + b"a" * 15000), twisted_web_head_warning(b"/x\x9b"),
                  *autobahn_events(), failure_event("\x1b[2J" + "E" * 5000),
                  emitted("remotedialer.test", "mid-body: {r}", r="\x00\x1b[31m\u009b" + "A" * 5000)]
        for event in events:
            line = event_as_json_line(event)
            self.assertEqual(line.count("\n"), 1)
            self.assert_safe(line)
            self.assertIsInstance(json.loads(line), dict)

    def test_long_traceback_keeps_its_end(self) -> None:
        def deep(n: int) -> None:
            if n:
                deep(n - 1)
            raise ValueError("boom")

        events: list[dict] = []
        try:
            deep(80)
        except ValueError:
            Logger(namespace="t", observer=events.append).failure("it failed", Failure())
        self.assertGreater(len(events[0]["log_failure"].getTraceback()), 3 * MAX_LINE_BYTES)
        record = json.loads(event_as_json_line(events[0]))
        self.assertTrue(record["traceback"].startswith("(cut: "), record["traceback"][:80])
        self.assertTrue(record["traceback"].endswith("ValueError: boom\n"), record["traceback"][-80:])
        self.assertEqual((record["text"], record["error"]), ("it failed", "boom"))

    def test_c1_escaped_as_json(self) -> None:
        line = event_as_json_line(emitted("remotedialer.test", "x", raw="a\u009bb\u2028c"))
        self.assertIn("\\u009b", line)
        self.assertEqual(json.loads(line)["raw"], "a\u009bb\u2028c")  # (JSON escapes: the value is the same)
        self.assert_safe(line)

    def test_many_fields(self) -> None:
        fields = {f"f{i}": "v" * 400 for i in range(40)}
        line = event_as_json_line(emitted("remotedialer.test", "many", **fields))
        self.assertLessEqual(len(line.encode()) - 1, MAX_LINE_BYTES)
        self.assertEqual(json.loads(line)["text"], "many")


class TextLogObserverTests(SynchronousTestCase):
    """text_log_observer: twistd's text log, to where twistd's options say, made safe."""

    def setUp(self) -> None:
        names = ("logfile", "syslog", "prefix", "nodaemon")
        saved = {name: getattr(_logging._TextLog, name) for name in names}

        def restore() -> None:
            for name, value in saved.items():
                setattr(_logging._TextLog, name, value)

        self.addCleanup(restore)

    def test_log_file(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)  # (SIGUSR1 rotates the file, as twistd's)
        path = os.path.abspath(self.mktemp())
        _logging._TextLog.take({"logfile": path, "nodaemon": True})
        observer = _logging.text_log_observer()
        for event in autobahn_events():
            observer(event)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(text.count("\n"), 2)
        self.assertIn("failing WebSocket opening handshake", text)
        self.assertNotIn("\u009b", text)
        self.assertLess(max(len(line) for line in text.split("\n")), MAX_LINE_BYTES)

    def test_standard_output_with_nodaemon(self) -> None:
        for options in ({"logfile": "-", "nodaemon": True}, {"logfile": None, "nodaemon": True}):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            _logging._TextLog.take(options)
            _logging.text_log_observer()(emitted("remotedialer.test", "to {where}", where="stdout"))
            self.assertIn("to stdout", out.getvalue())
