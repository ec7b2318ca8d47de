"""
A fuzz test of the real programs (issue "Hardening III").

One C{twistd remotedialer-server} with every listener (the tunnel, the
front door on its own listener, the CONNECT proxy, SOCKS5, a port forward
and the admin endpoint) and a C{twistd remotedialer-client} that reaches a
small demo HTTP service (C{twistd web}).  Then, for a bounded time, every
listener gets:

  - fixed malformed inputs (L{fixed_cases}: the issue's cases and more),
    each with what it must be answered;
  - seeded random mutations of valid requests (the seed is printed; set
    it with C{REMOTEDIALER_FUZZ_SEED});
  - on the tunnel, hand-made sessions: a valid client token, then
    WebSocket frames and remotedialer messages made by hand (random,
    malformed, and the fixed cases of L{Fuzz.session_cases}), and a
    hand-made client whose streams answer the front door with junk;
  - every second, a valid request through each path (and two long-lived
    streams, through the CONNECT proxy and SOCKS5), which must succeed.

Then: every process still runs; every complete input got an answer or a
close within L{HANG_DEADLINE} (an incomplete one is only waited for where
a fixed case says so); no C{Traceback}/C{Unhandled}/C{critical}, no line
over 2 KiB, no C0/C1 control character but newline and no Python repr
(C{<... at 0x...>}) in the programs' logs; the server's open files and
RSS back near where they were before the fuzzing.

Every problem is collected and the test fails once, listing all of them.
The report (per listener: the inputs tried and the answers they got) is
written to C{fuzz-report.txt} beside the programs' logs, or to
C{REMOTEDIALER_FUZZ_REPORT}.

  REMOTEDIALER_FUZZ_SECONDS   how long to fuzz (default 20)
  REMOTEDIALER_FUZZ_SEED      the seed (default: a random one, printed)
  REMOTEDIALER_FUZZ_REPORT    where to write the report

The cases of a target that is this server's own listener spelled another
way (self-nesting: C{0x7f.1}, C{2130706433}, ...) are run unless
L{SKIP_NESTING} says why not.

Only loopback addresses are used.  Tunnel-path inputs that are not
expected to authenticate come from their own loopback source addresses
(127.0.x.y), so that the server's brute-force limiter, which delays and
then refuses an address's attempts after failures, does not turn the
fuzzing into a test of the limiter.
"""

from __future__ import annotations

import base64
import glob
import os
import random
import re
import struct
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall

from remotedialer.server._auth import hash_token
from tests.support import eventually, wait
from tests.system.test_programs import ProgramTestCase, run

FUZZ_SECONDS = float(os.environ.get("REMOTEDIALER_FUZZ_SECONDS", "20"))
#: A complete input must be answered or closed within this many seconds.
HANG_DEADLINE = 5.0
#: The server's default time for a request head or proxy handshake (UpgradeLimits.timeout).
HEAD_TIMEOUT = 10.0
#: After the last byte of an answer, how long we wait for the close before we stop listening.
LINGER = 1.0
#: Bytes of an answer kept for the report and the checks.
KEEP = 256 * 1024
#: Mutation workers (each has one input in flight at a time).
WORKERS = 8
#: Fixed cases sent at once.
FIXED_CONCURRENCY = 12
#: The log checks.
LONGEST_LOG_LINE = 2048
BAD_WORDS = (b"Traceback", b"Unhandled", b"CRITICAL", b"critical", b"MESSAGE LOST")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x80-\x9f]")
_REPR = re.compile(rb"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+")
#: The server's --frontdoor-idle-timeout (seconds).
FRONTDOOR_IDLE = 3
#: How far the server may stay above its open files and RSS before the fuzzing.
FD_SLACK = 4
RSS_SLACK = 32 * 1024 * 1024

#: Why the self-nesting cases (a target that is one of this server's own listeners,
#: through another spelling of 127.0.0.1) are not run; empty: they are.
SKIP_NESTING = ""

DEMO_BODY = b"hello from the demo\n"
#: Client keys: foo the real client program; fuzz the hand-made sessions sent junk; fuzzr the
#: hand-made client that answers the front door's streams; fuzzv valid upgrades (and the fixed
#: tunnel cases); fuzzm the mutated upgrades.
CLIENT_KEYS = ("foo", "fuzz", "fuzzr", "fuzzv", "fuzzm")


def _seed() -> int:
    text = os.environ.get("REMOTEDIALER_FUZZ_SEED")
    return int(text) if text else random.SystemRandom().randrange(2 ** 32)


# -- Raw connections -------------------------------------------------------------------------


@dataclass
class Answer:
    """What a raw connection got back."""

    data: bytes = b""
    received: int = 0
    closed: bool = False  # the server closed (or reset) the connection
    reset: bool = False
    hang: bool = False  # nothing at all came back, and no close, within the deadline
    elapsed: float = 0.0
    error: str | None = None  # could not connect

    @property
    def answered(self) -> bool:
        return self.received > 0 or self.closed


class _Probe(Protocol):
    def __init__(self, payload: bytes, deadline: float, stop_when: Callable[[bytes], bool] | None,
                 linger: float | None) -> None:
        self.payload = payload
        self.deadline = deadline
        self.stop_when = stop_when
        self.linger = linger
        self.answer = Answer()
        self.done: defer.Deferred[Answer] = defer.Deferred()
        self._data = bytearray()
        self._started = 0.0
        self._timer = None
        self._quiet = None
        self._we_closed = False

    def connectionMade(self) -> None:
        self._started = reactor.seconds()
        self._timer = reactor.callLater(self.deadline, self._give_up)
        _LIVE.add(self)
        if self.payload:
            self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.answer.received += len(data)
        if len(self._data) < KEEP:
            self._data += data[: KEEP - len(self._data)]
        if self.stop_when is not None and self.stop_when(bytes(self._data)):
            self._stop()
            return
        if self.linger is None:
            return  # wait for the close (or the deadline)
        if self._quiet is not None and self._quiet.active():
            self._quiet.reset(self.linger)
        else:
            self._quiet = reactor.callLater(self.linger, self._stop)

    def _give_up(self) -> None:
        self._timer = None
        if self.answer.received == 0:
            self.answer.hang = True
        self._stop()

    def _stop(self) -> None:
        self._we_closed = True
        self.transport.abortConnection()

    def abort(self) -> None:
        self._stop()

    def connectionLost(self, reason) -> None:
        _LIVE.discard(self)
        for call in (self._timer, self._quiet):
            if call is not None and call.active():
                call.cancel()
        self.answer.data = bytes(self._data)
        self.answer.elapsed = reactor.seconds() - self._started
        if not self._we_closed:
            self.answer.closed = True
            self.answer.reset = "reset" in str(reason.value).lower()
        self.done.callback(self.answer)


#: Open raw connections (aborted when the test ends).
_LIVE: set = set()
_source_counter = [0]


def fresh_source() -> str:
    """A loopback source address of its own (127.0.1.1, 127.0.1.2, ...): see the module docstring."""
    n = _source_counter[0] = _source_counter[0] + 1
    n %= 250 * 250
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


async def probe(port: int, payload: bytes, deadline: float = HANG_DEADLINE, source: str = "127.0.0.1",
                stop_when: Callable[[bytes], bool] | None = None, linger: float | None = LINGER) -> Answer:
    """
    Connect to 127.0.0.1:C{port} (from C{source}), send C{payload}, collect
    the answer: until the server closes, C{deadline} passes, C{stop_when}
    holds, or (if not None) nothing more came for C{linger} seconds.
    """
    protocol = _Probe(payload, deadline, stop_when, linger)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=deadline, bindAddress=(source, 0))
    try:
        await connectProtocol(endpoint, protocol)
    except Exception as e:
        return Answer(error=f"{type(e).__name__}: {e}")
    return await protocol.done


async def within(d: defer.Deferred, seconds: float) -> bool:
    """Whether C{d} fires within C{seconds} (C{d} keeps its result for others)."""
    if d.called:
        return True
    done: defer.Deferred[bool] = defer.Deferred()

    def fired(result):
        if not done.called:
            done.callback(True)
        return result

    timer = reactor.callLater(seconds, lambda: done.called or done.callback(False))
    d.addBoth(fired)
    result = await done
    if timer.active():
        timer.cancel()
    return result


# -- Requests, and reading answers -----------------------------------------------------------


def http(method: bytes, target: bytes, headers: list[bytes] = (), body: bytes = b"",
         version: bytes = b"HTTP/1.1", host: bytes = b"127.0.0.1", close: bool = True) -> bytes:
    lines = [b"%s %s %s" % (method, target, version), b"Host: " + host, *headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def http_status(data: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(found.group(1)) if found else None


def http_body(data: bytes) -> bytes:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return b""
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        out = bytearray()
        while rest:
            size_line, sep, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0 or not sep:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        return bytes(out)
    return rest


def http_complete(data: bytes) -> bool:
    """
    Whether a server has all it needs to answer this request (conservative:
    a head the server must wait on for a body is incomplete unless the body
    is all there).
    """
    stripped = data.lstrip(b"\r\n")
    head, sep, body = stripped.partition(b"\r\n\r\n")
    if not sep:
        return False
    lowered = head.lower()
    if b"transfer-encoding" in lowered:
        return False
    if b"content-length" in lowered:
        lengths = re.findall(rb"(?im)^content-length: *(\d{1,12})\r?$", head)
        if len(lengths) != 1 or lowered.count(b"content-length") != 1:
            return False
        return len(body) >= int(lengths[0])
    return True


def socks_complete(data: bytes, password: bytes) -> bool:
    """Whether a SOCKS5 server has all it needs to answer or refuse (see RFC 1928, 1929)."""
    b = data
    if not b:
        return False
    if b[0] != 5:
        return True
    if len(b) < 2 or len(b) < 2 + b[1]:
        return False
    methods, i = b[2:2 + b[1]], 2 + b[1]
    if 2 not in methods:
        return True  # no acceptable method: refused at once
    if len(b) <= i:
        return False
    if b[i] != 1:
        return True
    if len(b) < i + 2:
        return False
    j = i + 2 + b[i + 1]
    if len(b) < j + 1:
        return False
    k = j + 1 + b[j]
    if len(b) < k:
        return False
    if b[j + 1:k] != password:
        return True  # authentication failure
    i = k
    if len(b) <= i:
        return False
    if b[i] != 5:
        return True
    if len(b) < i + 2:
        return False
    if b[i + 1] != 1:
        return True
    if len(b) < i + 4:
        return False
    atyp = b[i + 3]
    if atyp == 1:
        need = i + 10
    elif atyp == 4:
        need = i + 22
    elif atyp == 3:
        if len(b) < i + 5:
            return False
        need = i + 5 + b[i + 4] + 2
    else:
        return True
    return len(b) >= need


def _short(data: bytes, limit: int = 100) -> str:
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


def describe(kind: str, answer: Answer) -> str:
    """One short line for the report: what came back, and how the connection ended."""
    if answer.error:
        return f"could not connect: {answer.error}"
    if answer.hang:
        return f"NO ANSWER within {answer.elapsed:.1f} s"
    data = answer.data
    if not data:
        what = "closed, no answer" if not answer.reset else "reset, no answer"
    elif kind == "socks" and data[:1] in (b"\x05", b"\x00", b"\x01"):
        what = "SOCKS " + data[:14].hex(" ")
        if b"HTTP/1." in data:
            inner = data[data.find(b"HTTP/1."):].split(b"\r\n", 1)[0]
            what += f" + {_short(inner, 40)}"
    elif http_status(data) is not None:
        status_line = data.split(b"\r\n", 1)[0]
        body = http_body(data).split(b"\n", 1)[0]
        what = _short(status_line, 70) + (f" | {_short(body, 70)}" if body else "")
        if kind == "connect" and http_status(data) == 200 and b"\r\n\r\nHTTP/1." in data:
            inner = data[data.find(b"\r\n\r\nHTTP/1.") + 4:].split(b"\r\n", 1)[0]
            what += f" + {_short(inner, 40)}"
    else:
        what = _short(data, 60)
    end = "closed" if answer.closed else "left open"
    return f"{what} [{end}, {answer.elapsed:.2f} s]"


def outcome_class(kind: str, answer: Answer) -> str:
    """A coarse class of an answer, for counting mutations' answers."""
    if answer.error:
        return "connect error"
    if answer.hang:
        return "no answer"
    data = answer.data
    if not data:
        return "closed, no answer"
    if kind == "socks" and data[:1] == b"\x05":
        return "SOCKS " + data[:2].hex() + (" " + data[4:6].hex() if len(data) >= 6 else "")
    status = http_status(data)
    if status is not None:
        return f"HTTP {status}"
    if kind == "socks":
        return "SOCKS " + data[:2].hex()
    return "other bytes"


# Expectations of the fixed cases: answer -> None if met, else what is wrong.

def one_line(body: bytes) -> bool:
    """One line of printable text (a newline at its end or not), as the project's error answers are."""
    text = body.decode("utf-8", "replace")
    line = text[:-1] if text.endswith("\n") else text
    return 0 < len(body) < 1024 and not _CONTROL.search(line) and "\n" not in line


def expect_status(*codes: int, one_line_body: bool = False, absent: bytes | None = None, label: str = ""):
    wanted = label or "HTTP " + "/".join(map(str, codes))

    def check(answer: Answer) -> str | None:
        status = http_status(answer.data)
        if status not in codes:
            return f"expected {wanted}"
        if absent is not None and absent.lower() in answer.data.split(b"\r\n\r\n", 1)[0].lower():
            return f"expected no {absent.decode()} header"
        if one_line_body and not one_line(http_body(answer.data)):
            return f"expected {wanted} with a one-line text body"
        return None
    return check


def expect_error_status(one_line_body: bool = True):
    """An HTTP 4xx/5xx answer (with a one-line text body), not a bare close."""
    return expect_status(*range(400, 600), one_line_body=one_line_body, label="an HTTP 4xx/5xx answer")


def expect_taken(one_line_error: bool):
    """
    A head within the documented limit is taken: an HTTP answer that is not 431 (nor a close);
    an error answer of our own (C{one_line_error}) is one line of text, not twisted.web's bare 400.
    """
    def check(answer: Answer) -> str | None:
        status = http_status(answer.data)
        if status is None or status == 431:
            return "expected the head taken (an HTTP answer, not 431)"
        if one_line_error and status >= 400 and not one_line(http_body(answer.data)):
            return "expected the head taken, and an error answered with a one-line text body"
        return None
    return check


def expect_socks_reply(code: int):
    def check(answer: Answer) -> str | None:
        data = answer.data
        # method choice (05 02), authentication status (01 00), then the reply.
        if data[:4] != b"\x05\x02\x01\x00" or data[4:6] != bytes([5, code]):
            return f"expected the SOCKS reply 0x{code:02x} after authentication"
        return None
    return check


def expect_closed_within(seconds: float):
    def check(answer: Answer) -> str | None:
        if not answer.closed or answer.elapsed > seconds:
            return f"expected the connection closed within {seconds:g} s"
        return None
    return check


def expect_any_bytes(answer: Answer) -> str | None:
    return None if answer.received else "expected an answer, not a bare close"


# -- The remotedialer protocol and WebSocket frames, by hand (docs: PROTOCOL.md) ---------------

DATA, CONNECT, ERROR, ADD_CLIENT, REMOVE_CLIENT, PAUSE, RESUME, SYNC = range(1, 9)


def varint(n: int) -> bytes:
    """Go's binary.PutVarint (zig-zag, then LEB128)."""
    u = ((n << 1) ^ (n >> 63)) & (2 ** 64 - 1)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = u = 0
    for _ in range(10):
        if i >= len(buf):
            raise ValueError("truncated")
        b = buf[i]
        i += 1
        u |= (b & 0x7F) << shift
        if b < 0x80:
            return (u >> 1) ^ -(u & 1), i
        shift += 7
    raise ValueError("too long")


def message(msg_id: int, conn_id: int, mtype: int, payload: bytes = b"") -> bytes:
    head = varint(msg_id) + varint(conn_id) + varint(mtype)
    if mtype in (DATA, CONNECT):
        head += varint(15000)
    return head + payload


def parse_message(buf: bytes) -> tuple[int, int, bytes] | None:
    try:
        _, i = read_varint(buf, 0)
        conn, i = read_varint(buf, i)
        mtype, i = read_varint(buf, i)
        if mtype in (DATA, CONNECT):
            _, i = read_varint(buf, i)
    except ValueError:
        return None
    return mtype, conn, buf[i:]


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    keystream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")


def ws_frame(payload: bytes, opcode: int = 2, fin: bool = True, rsv: int = 0, masked: bool = True,
             length: int | None = None, key: bytes = b"\x11\x22\x33\x44") -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 65536:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    return head + (key + _mask(payload, key) if masked else payload)


class HandSession(Protocol):
    """
    A tunnel client made by hand: the upgrade, then WebSocket frames and
    remotedialer messages written directly.  With a C{responder}, it
    answers the streams the server opens to it.
    """

    def __init__(self, client_key: str, token: str, responder: Responder | None = None) -> None:
        self.client_key = client_key
        self.token = token
        self.responder = responder
        self.head = bytearray()
        self.status: int | None = None
        self.upgraded: defer.Deferred[int | None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.buffer = bytearray()
        self.fragments = bytearray()
        self.received: list[tuple[int, int, bytes]] = []  # (type, conn, payload) messages from the server
        self.got_message = defer.Deferred()
        self.close_frame: bytes | None = None
        self.is_closed = False
        self.msg_id = random.Random(client_key).randrange(1, 2 ** 20)
        self._ping = None

    def connectionMade(self) -> None:
        _LIVE.add(self)
        key = base64.b64encode(random.Random(self.msg_id).randbytes(16))
        self.transport.write(http(b"GET", b"/connect", [
            b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: " + key, b"X-Tunnel-ID: " + self.client_key.encode(),
            b"Authorization: Bearer " + self.token.encode()], close=False))

    def dataReceived(self, data: bytes) -> None:
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = http_status(bytes(self.head)) or 0
            rest = bytes(self.head[end + 4:])
            self.upgraded.callback(self.status)
            if self.status != 101:
                self.transport.loseConnection()
                return
            if self.responder is not None:  # ping as Go does, so the server keeps us
                self._ping = LoopingCall(lambda: self.send_frame(ws_frame(b"", opcode=9)))
                self._ping.start(5.0, now=False)
            data = rest
        self.buffer += data
        self._frames()

    def _frames(self) -> None:
        while len(self.buffer) >= 2:
            b0, b1 = self.buffer[0], self.buffer[1]
            n, i = b1 & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    return
                n, i = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif n == 127:
                if len(self.buffer) < 10:
                    return
                n, i = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < i + n:
                return
            payload = bytes(self.buffer[i:i + n])
            del self.buffer[:i + n]
            opcode = b0 & 0x0F
            if opcode == 8:
                self.close_frame = payload
                self.transport.loseConnection()
                return
            if opcode == 9:
                self.send_frame(ws_frame(payload, opcode=10))
                continue
            if opcode == 10:
                continue
            if opcode in (0, 1, 2):
                self.fragments += payload
                if b0 & 0x80:
                    whole, self.fragments = bytes(self.fragments), bytearray()
                    self._message(whole)

    def _message(self, payload: bytes) -> None:
        parsed = parse_message(payload)
        if parsed is None:
            return
        self.received.append(parsed)
        if len(self.received) > 10000:
            del self.received[:5000]
        waiter, self.got_message = self.got_message, defer.Deferred()
        waiter.callback(parsed)
        if self.responder is not None:
            self.responder.handle(self, *parsed)

    def send_frame(self, frame: bytes) -> None:
        if not self.is_closed and self.transport is not None:
            self.transport.write(frame)

    def send(self, conn: int, mtype: int, payload: bytes = b"") -> None:
        self.msg_id += 1
        self.send_frame(ws_frame(message(self.msg_id, conn, mtype, payload)))

    def close(self) -> None:
        if not self.is_closed:
            self.send_frame(ws_frame(struct.pack("!H", 1000), opcode=8))
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        _LIVE.discard(self)
        self.is_closed = True
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        if not self.upgraded.called:
            self.upgraded.callback(None)
        self.lost.callback(None)

    def abort(self) -> None:
        if not self.is_closed:
            self.transport.abortConnection()

    async def wait_for(self, predicate, seconds: float):
        """The first message from the server (from now on) for which C{predicate} holds, or None."""
        deadline = reactor.seconds() + seconds
        seen = len(self.received)
        for _ in range(1_000_000):
            for item in self.received[seen:]:
                if predicate(*item):
                    return item
            seen = len(self.received)
            left = deadline - reactor.seconds()
            if left <= 0 or self.is_closed:
                return None
            await within(self.got_message, left)


async def open_session(port: int, client_key: str, token: str, responder: Responder | None = None,
                       source: str = "127.0.0.1") -> HandSession | None:
    session = HandSession(client_key, token, responder)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=HANG_DEADLINE, bindAddress=(source, 0))
    try:
        await connectProtocol(endpoint, session)
    except Exception:
        return None
    if not await within(session.upgraded, HANG_DEADLINE) or session.status != 101:
        session.abort()
        return None
    return session


class Responder:
    """
    The streams the server opens to the hand-made client C{fuzzr}: a
    request for C{/valid...} gets a good answer; C{/junk/<behaviour>/<seed>}
    gets one of L{JUNK_ANSWERS}; anything else a clean close.
    """

    def __init__(self, mutator: Mutator) -> None:
        self.mutator = mutator
        self.streams: dict[int, bytearray] = {}
        self.behaviours: Counter = Counter()

    def handle(self, session: HandSession, mtype: int, conn: int, payload: bytes) -> None:
        if mtype == CONNECT:
            self.streams[conn] = bytearray()
        elif mtype == DATA and conn in self.streams:
            buf = self.streams[conn]
            buf += payload
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(buf[:end])
                del buf[:end + 4]
                self.answer(session, conn, head.split(b" ")[1] if head.count(b" ") >= 2 else b"/")
        elif mtype == ERROR:
            self.streams.pop(conn, None)

    def answer(self, session: HandSession, conn: int, path: bytes) -> None:
        if path.startswith(b"/valid"):
            session.send(conn, DATA, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
                                     b"valid\n")
            session.send(conn, ERROR, b"EOF")
            self.streams.pop(conn, None)
            return
        found = re.match(rb"/junk/(\d+)/(\d+)", path)
        if found is None:
            session.send(conn, ERROR, b"EOF")
            return
        name, behaviour = JUNK_ANSWERS[int(found.group(1)) % len(JUNK_ANSWERS)]
        self.behaviours[name] += 1
        behaviour(session, conn, random.Random(int(found.group(2))), self.mutator)


_GOOD_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nvalid\n"


def _junk_text(rng: random.Random) -> bytes:
    pieces = [b"\x00", b"\x1b[31m", b"\xc2\x9b", b"\x9b", b"\r\n", b"\n", b"EOF", b"\xff\xfe",
              b"connection refused", b"A" * 5000, b"%s", b"{x}"]
    return b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))


def _junk_mutated(s, conn, rng, mutator):
    s.send(conn, DATA, mutator.mutate(_GOOD_RESPONSE, rng))
    s.send(conn, ERROR, b"EOF")


def _junk_big_head(s, conn, rng, mutator):
    s.send(conn, DATA, b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 70000 + b"\r\nContent-Length: 0\r\n\r\n")
    s.send(conn, ERROR, b"EOF")


def _junk_error_text(s, conn, rng, mutator):
    s.send(conn, ERROR, _junk_text(rng))


def _junk_pause(s, conn, rng, mutator):
    s.send(conn, PAUSE)


def _junk_nothing(s, conn, rng, mutator):
    pass


def _junk_error_mid_body(s, conn, rng, mutator):
    s.send(conn, DATA, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    s.send(conn, ERROR, _junk_text(rng))


def _junk_huge_length(s, conn, rng, mutator):
    s.send(conn, DATA, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % 10 ** 23)
    s.send(conn, ERROR, b"EOF")


def _junk_huge_chunk(s, conn, rng, mutator):
    s.send(conn, DATA, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\nabc" % 2 ** 112)
    s.send(conn, ERROR, b"EOF")


def _junk_other_stream(s, conn, rng, mutator):
    s.send(conn + 1000, DATA, b"not yours")
    s.send(conn, CONNECT, b"tcp/127.0.0.1:1")  # the same id, from our side
    s.send(conn, DATA, _GOOD_RESPONSE)
    s.send(conn, ERROR, b"EOF")


def _junk_big_body(s, conn, rng, mutator):
    size = 900 * 1024
    s.send(conn, DATA, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(size // (60 * 1024)):
        s.send(conn, DATA, b"b" * (60 * 1024))
    s.send(conn, DATA, b"b" * (size % (60 * 1024)))
    s.send(conn, ERROR, b"EOF")


def _junk_control_head(s, conn, rng, mutator):
    s.send(conn, DATA, b"HTTP/1.1 200 O\x1b[31mK\xc2\x9b\r\nX-A: \x9b\x01\r\nContent-Length: 0\r\n\r\n")
    s.send(conn, ERROR, b"EOF")


def _junk_bad_status(s, conn, rng, mutator):
    s.send(conn, DATA, b"HTTP/1.1 99999999999999999999 X\r\nContent-Length: 0\r\n\r\n")
    s.send(conn, ERROR, b"EOF")


def _junk_empty(s, conn, rng, mutator):
    s.send(conn, ERROR, b"EOF")


def _junk_extra(s, conn, rng, mutator):
    s.send(conn, DATA, _GOOD_RESPONSE + _GOOD_RESPONSE + b"HTTP/1.1 500 extra\r\n\r\n")
    s.send(conn, ERROR, b"EOF")


def _junk_random(s, conn, rng, mutator):
    s.send(conn, DATA, rng.randbytes(rng.randint(1, 2000)))
    s.send(conn, ERROR, b"EOF")


def _junk_resume_pause(s, conn, rng, mutator):
    s.send(conn, RESUME)
    s.send(conn, PAUSE)
    s.send(conn, RESUME)
    s.send(conn, DATA, _GOOD_RESPONSE)
    s.send(conn, ERROR, b"EOF")


JUNK_ANSWERS = [
    ("mutated response", _junk_mutated), ("70 KiB head", _junk_big_head),
    ("Error with junk text", _junk_error_text), ("Pause, then silence", _junk_pause),
    ("silence", _junk_nothing), ("Error mid-body", _junk_error_mid_body),
    ("Content-Length 10^23", _junk_huge_length), ("chunk 2^112", _junk_huge_chunk),
    ("other stream, own Connect", _junk_other_stream), ("900 KiB body", _junk_big_body),
    ("control chars in head", _junk_control_head), ("status 10^20", _junk_bad_status), ("empty", _junk_empty),
    ("extra responses", _junk_extra), ("random bytes", _junk_random),
    ("Resume/Pause/Resume", _junk_resume_pause),
]


# -- Mutations -------------------------------------------------------------------------------

INTERESTING = [
    b"\x00", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x9b", b"\xc2\x9b", b"\x1b[31m", b"\x7f", b"\xff",
    b"\xfe\xff", b"%00", b"%0d%0a", b"%c2%9b", b"%", b"%zz", b"..", b"/../", b"%2e%2e/", b" ", b"\t", b":",
    b"::", b"[", b"]",
    b"@", b"?", b"#", b"&", b"=", b"/", b"//", b"-1", b"0", b"18446744073709551616", b"1e309", b"nan",
    b"99999999999999999999999", b"0x7f.1", b"2130706433", b"[::ffff:127.0.0.1]", b"127.1", b"localhost",
    b"A" * 300, b"A" * 5000, b"\xe2\x80\xae", b"\xf0\x9f\x98\x80", b"\xc0\xaf",
    b"Transfer-Encoding: chunked\r\n", b"Content-Length: 99999999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Upgrade: websocket\r\n", b"Connection: Upgrade\r\n", b"Expect: 100-continue\r\n", b"Host: \x9b\r\n",
    b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1", b"CONNECT", b"HEAD", b"POST", b"OPTIONS", b"*",
]
_DELIMITERS = re.compile(rb"([ /:?&=\r\n.]+)")


class Mutator:
    """Seeded mutations of bytes (one to three at a time)."""

    def mutate(self, data: bytes, rng: random.Random) -> bytes:
        out = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            out = getattr(self, rng.choice(self.OPS))(out, rng)
        return bytes(out[: 200 * 1024])

    OPS = ("_flip", "_set", "_insert", "_insert_random", "_delete", "_duplicate", "_truncate", "_token",
           "_token", "_repeat_line", "_insert", "_set_length")

    @staticmethod
    def _pos(out: bytearray, rng: random.Random) -> int:
        return rng.randint(0, len(out))

    def _flip(self, out, rng):
        if out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return out

    def _set(self, out, rng):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        return out

    def _insert(self, out, rng):
        i = self._pos(out, rng)
        return out[:i] + rng.choice(INTERESTING) + out[i:]

    def _insert_random(self, out, rng):
        i = self._pos(out, rng)
        return out[:i] + rng.randbytes(rng.randint(1, 16)) + out[i:]

    def _delete(self, out, rng):
        i = self._pos(out, rng)
        return out[:i] + out[i + rng.randint(1, 32):]

    def _duplicate(self, out, rng):
        i = self._pos(out, rng)
        j = min(len(out), i + rng.randint(1, 64))
        return out[:j] + out[i:j] * rng.randint(1, 50) + out[j:]

    def _truncate(self, out, rng):
        return out[: self._pos(out, rng)]

    def _token(self, out, rng):
        parts = _DELIMITERS.split(bytes(out))
        tokens = [i for i, p in enumerate(parts) if p and not _DELIMITERS.fullmatch(p)]
        if tokens:
            parts[rng.choice(tokens)] = rng.choice(INTERESTING)
        return bytearray(b"".join(parts))

    def _repeat_line(self, out, rng):
        lines = bytes(out).split(b"\r\n")
        if len(lines) > 2:
            i = rng.randrange(1, len(lines) - 1)
            lines[i:i + 1] = [lines[i]] * rng.choice((2, 50, 101, 600))
        return bytearray(b"\r\n".join(lines))

    def _set_length(self, out, rng):
        # A SOCKS length byte, a WebSocket length, a digit: make it big or zero.
        if out:
            out[rng.randrange(len(out))] = rng.choice((0, 0x7F, 0x80, 0xFF))
        return out


# -- The session fuzz: junk frames -----------------------------------------------------------


def junk_frame(rng: random.Random, msg_id: int) -> tuple[bytes, str, bool]:
    """(frame bytes, kind, whether the frame is whole) of one random input to a tunnel session."""
    conn = rng.choice((0, 1, 2, 3, -1, 2 ** 62, -(2 ** 63), rng.randrange(2 ** 31)))
    kind = rng.randrange(14)
    if kind == 0:
        return ws_frame(rng.randbytes(rng.randint(0, 300))), "random binary message", True
    if kind == 1:
        mtype = rng.choice((0, 9, 15, 100, -1, 2 ** 40, *range(1, 9)))
        return ws_frame(message(msg_id, conn, mtype, rng.randbytes(rng.randint(0, 80)))), "random type", True
    if kind == 2:
        bad = rng.choice((b"\x80", b"\x02\x80", b"\x02\x04", b"\x80" * 11, b"\xff" * 10 + b"\x7f", b""))
        return ws_frame(bad), "malformed varints", True
    if kind == 3:
        return ws_frame(message(msg_id, rng.randrange(2, 2 ** 20), DATA, b"x" * rng.randint(0, 100))), \
            "Data, unknown stream", True
    if kind == 4:
        target = rng.choice((b"tcp/127.0.0.1:1", b"foo::tcp/127.0.0.1:80", b"unix//etc/passwd",
                             b"tcp/" + b"a" * 300, b"tcp/\x9b\x1b:1", b"", b"/", b"tcp/[::1",
                             b"udp/127.0.0.1:53"))
        return ws_frame(message(msg_id, conn, CONNECT, target)), "Connect from the client", True
    if kind == 5:
        return ws_frame(message(msg_id, conn, ERROR, _junk_text(rng))), "Error, junk text", True
    if kind == 6:
        payload = rng.choice((b"ghost/1", b"foo/1", b"", b"/", b"\x9b/\x1b", b"a" * 200 + b"/1"))
        return ws_frame(message(msg_id, 0, rng.choice((ADD_CLIENT, REMOVE_CLIENT)), payload)), \
            "AddClient/RemoveClient from a client", True
    if kind == 7:
        return ws_frame(message(msg_id, 0, SYNC, rng.randbytes(rng.choice((0, 7, 8, 9, 800))))), \
            "SyncConnections", True
    if kind == 8:
        return ws_frame(message(msg_id, conn, rng.choice((PAUSE, RESUME)))), "Pause/Resume", True
    if kind == 9:
        opcode = rng.choice((1, 3, 7, 11, 15, 0))
        return ws_frame(rng.randbytes(rng.randint(0, 40)), opcode=opcode), f"opcode {opcode}", True
    if kind == 10:
        variant = rng.randrange(5)
        if variant == 0:
            return ws_frame(rng.randbytes(rng.randint(126, 200)), opcode=9), "ping over 125 bytes", True
        if variant == 1:
            return ws_frame(b"x", opcode=9, fin=False), "fragmented ping", True
        if variant == 2:
            code = rng.choice((0, 999, 1005, 1006, 5000, 65535))
            frame = ws_frame(struct.pack("!H", code) + _junk_text(rng)[:100], opcode=8)
            return frame, "close, bad code/reason", True
        if variant == 3:
            return ws_frame(b"\x03", opcode=8), "close, 1-byte payload", True
        return ws_frame(b"\x03\xe8" + b"\xc2\x9b\x1b[31m", opcode=8), "close, control chars in reason", True
    if kind == 11:
        return ws_frame(message(msg_id, conn, DATA, b"d"), rsv=rng.randint(1, 7)), "reserved bits", True
    if kind == 12:
        return ws_frame(message(msg_id, conn, DATA, b"d"), masked=False), "unmasked frame", True
    length = rng.choice((2 ** 63 - 1, 2 ** 64 - 1, 2 * 1024 * 1024, 70000))
    return ws_frame(b"", length=length)[: 14], f"frame claiming {length} bytes", False


# -- The test --------------------------------------------------------------------------------


@dataclass
class Case:
    listener: str
    name: str
    data: bytes
    complete: bool = True
    expect: Callable[[Answer], str | None] | None = None
    deadline: float = HANG_DEADLINE
    source: str | None = None  # None: a fresh one for the tunnel (see fresh_source), else 127.0.0.1
    linger: float | None = LINGER


@dataclass
class Record:
    """Everything tried, and every problem, for the report."""

    fixed: list[tuple[str, str, str, str]] = field(default_factory=list)  # listener, case, answer, verdict
    mutations: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    mutation_examples: dict[tuple[str, str], str] = field(default_factory=dict)
    sessions: Counter = field(default_factory=Counter)
    session_outcomes: Counter = field(default_factory=Counter)
    valid: Counter = field(default_factory=Counter)
    observations: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def problem(self, kind: str, text: str) -> None:
        if len(self.problems[kind]) < 200:
            self.problems[kind].append(text)


def free_ports(count: int) -> list[int]:
    import socket

    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def read_logs(pattern: str) -> bytes:
    """A log file and its rotated parts (twistd rotates at 1 MB), oldest first."""
    paths = glob.glob(pattern + ".*") + glob.glob(pattern)
    paths.sort(key=lambda p: int(p.rsplit(".", 1)[1]) if p.rsplit(".", 1)[1].isdigit() else 0, reverse=True)
    out = b""
    for path in paths:
        with open(path, "rb") as f:
            out += f.read()
    return out


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class KeepAliveStream(Protocol):
    """A long-lived stream through a proxy: the handshake once, then GETs on one connection (h11)."""

    def __init__(self, handshake: bytes, reply_size: Callable[[bytes], int | None]) -> None:
        self.handshake = handshake
        self.reply_size = reply_size  # bytes of the proxy's reply once all in, else None
        self.pending = bytearray()
        self.shaken = False
        self.h11 = h11.Connection(h11.CLIENT)
        self.waiter: defer.Deferred | None = None
        self.body = b""
        self.ready: defer.Deferred = defer.Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        _LIVE.add(self)
        self.transport.write(self.handshake)

    def dataReceived(self, data: bytes) -> None:
        if not self.shaken:
            self.pending += data
            size = self.reply_size(bytes(self.pending))
            if size is None:
                return
            self.shaken = True
            data = bytes(self.pending[size:])
            self.ready.callback(bytes(self.pending[:size]))
        if data:  # (h11 takes b"" for the end of the connection)
            self.h11.receive_data(data)
        self._events()

    def _events(self) -> None:
        for _ in range(1000):
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                event = None
            if event is None or event is h11.NEED_DATA or event is h11.PAUSED or isinstance(
                    event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.Data):
                self.body += bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                waiter, self.waiter = self.waiter, None
                if waiter is not None:
                    waiter.callback(self.body)
                break

    async def get(self) -> bytes | None:
        if self.lost:
            return None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.body = b""
        self.waiter = defer.Deferred()
        waiter = self.waiter
        self.transport.write(self.h11.send(h11.Request(method="GET", target="/hello.txt",
                                                       headers=[("Host", "127.0.0.1")])))
        self.transport.write(self.h11.send(h11.EndOfMessage()))
        if not await within(waiter, HANG_DEADLINE):
            return None
        return waiter.result if not isinstance(waiter.result, defer.Failure) else None

    def connectionLost(self, reason) -> None:
        _LIVE.discard(self)
        self.lost = True
        if self.waiter is not None and not self.waiter.called:
            self.waiter.callback(None)
        if not self.ready.called:
            self.ready.callback(None)

    def abort(self) -> None:
        if not self.lost:
            self.transport.abortConnection()


class Fuzz:
    """One run: the programs' ports and credentials, the inputs, and the record."""

    def __init__(self, testcase: FuzzProgramsTests, directory: str, seed: int) -> None:
        self.testcase = testcase
        self.directory = directory
        self.seed = seed
        rng = random.Random(seed)
        self.tokens = {key: f"{key}-{rng.getrandbits(96):024x}" for key in CLIENT_KEYS}
        self.proxy_token = f"proxy-{rng.getrandbits(96):024x}"
        self.record = Record()
        self.mutator = Mutator()
        self.responder = Responder(self.mutator)
        self.stop_at = 0.0
        self.ports: dict[str, int] = {}

    # Credentials and requests.

    @property
    def pa(self) -> bytes:
        return b"Proxy-Authorization: Bearer " + self.proxy_token.encode()

    @property
    def basic(self) -> bytes:
        return b"Proxy-Authorization: Basic " + base64.b64encode(b"foo:" + self.proxy_token.encode())

    def tunnel_auth(self, key: str = "fuzzv") -> list[bytes]:
        return [b"X-Tunnel-ID: " + key.encode(), b"Authorization: Bearer " + self.tokens[key].encode()]

    UPGRADE = [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]

    def demo_path(self, path: bytes = b"/hello.txt", client: bytes = b"foo",
                  host: bytes | None = None) -> bytes:
        host = host if host is not None else b"127.0.0.1:%d" % self.ports["demo"]
        return b"/client/%s/http/%s%s" % (client, host, path)

    def connect_request(self, target: bytes, extra: list[bytes] = (), then: bytes = b"") -> bytes:
        return b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (
            target, target, b"".join(h + b"\r\n" for h in [self.basic, *extra]), then)

    def socks_request(self, host: bytes, port: int, atyp: int = 3, then: bytes = b"",
                      user: bytes = b"foo", password: bytes | None = None) -> bytes:
        password = self.proxy_token.encode() if password is None else password
        greeting = b"\x05\x01\x02" + b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
        if atyp == 3:
            address = bytes([len(host)]) + host
        elif atyp == 4:
            import ipaddress

            address = ipaddress.IPv6Address(host.decode()).packed
        else:
            import ipaddress

            address = ipaddress.IPv4Address(host.decode()).packed
        return greeting + b"\x05\x01\x00" + bytes([atyp]) + address + struct.pack("!H", port) + then

    def demo_get(self, close: bool = True) -> bytes:
        return http(b"GET", b"/hello.txt", close=close)

    def valid_requests(self) -> dict[str, tuple[str, bytes]]:
        """listener -> (kind, a valid request) to mutate."""
        p = self.ports
        return {
            "frontdoor": ("http", http(b"GET", self.demo_path(b"/hello.txt?timeout=2"), [self.pa])),
            "frontdoor-head": ("http", http(b"HEAD", self.demo_path(b"/hello.txt?timeout=2"), [self.pa])),
            "frontdoor-post": ("http", http(b"POST", self.demo_path(b"/hello.txt?timeout=2"),
                                            [self.pa, b"Content-Length: 5"], b"hello")),
            "admin": ("http", http(b"GET", b"/status?limit=3")),
            "admin-metrics": ("http", http(b"GET", b"/metrics", [b"Accept-Encoding: gzip"])),
            "admin-page": ("http", http(b"GET", b"/?refresh=2")),
            "tunnel": ("http", http(b"GET", b"/connect", [*self.UPGRADE, *self.tunnel_auth("fuzzm")],
                                    close=False)),
            "connect": ("connect", self.connect_request(b"127.0.0.1:%d" % p["demo"], then=self.demo_get())),
            "socks": ("socks", self.socks_request(b"127.0.0.1", p["demo"], then=self.demo_get())),
            "forward": ("http", self.demo_get()),
        }

    def port_of(self, listener: str) -> int:
        return self.ports[listener.split("-")[0]]

    # The fixed cases.

    def fixed_cases(self) -> list[Case]:
        p = self.ports
        T, F, C, S, W, A, D = (p[k] for k in ("tunnel", "frontdoor", "connect", "socks", "forward", "admin",
                                               "demo"))
        auth = self.tunnel_auth()
        pa = self.pa
        one_line_400 = expect_status(400, one_line_body=True)
        cases: list[Case] = []

        def add(listener, name, data, **kw):
            cases.append(Case(listener, name, data, **kw))

        # 1. The tunnel path without an upgrade, with a valid credential.
        add("tunnel", "GET /connect without Upgrade", http(b"GET", b"/connect", auth), expect=one_line_400)
        add("tunnel", "?redirect=https://evil.example/ (open redirect)",
            http(b"GET", b"/connect?redirect=https%3A%2F%2Fevil.example%2F", auth),
            expect=expect_status(400, one_line_body=True, absent=b"Location"))
        add("tunnel", "?redirect=x&after=abc", http(b"GET", b"/connect?redirect=x&after=abc", auth),
            expect=one_line_400)
        add("tunnel", "?redirect=http://[", http(b"GET", b"/connect?redirect=http%3A%2F%2F%5B", auth),
            expect=one_line_400)
        # 3. Autobahn's handshake failures: C1 characters, a 5 KB key (the logs are checked).
        upgrade = self.UPGRADE
        add("tunnel", "U+009B in Sec-WebSocket-Version",
            http(b"GET", b"/connect", [*upgrade[:2], b"Sec-WebSocket-Version: 1\xc2\x9b3", upgrade[3], *auth],
                 close=False), expect=expect_error_status(one_line_body=False))
        add("tunnel", "U+009B in Upgrade",
            http(b"GET", b"/connect", [b"Upgrade: web\xc2\x9bsocket", *upgrade[1:], *auth], close=False),
            expect=expect_error_status(one_line_body=False))
        add("tunnel", "U+009B in Sec-WebSocket-Extensions",
            http(b"GET", b"/connect", [*upgrade, b"Sec-WebSocket-Extensions: permessage-deflate; \xc2\x9b=1",
                                       *auth], close=False), expect=expect_error_status(one_line_body=False))
        add("tunnel", "U+009B and ESC in Sec-WebSocket-Protocol",
            http(b"GET", b"/connect", [*upgrade, b"Sec-WebSocket-Protocol: a\xc2\x9b\x1b[31mb", *auth],
                 close=False),
            expect=expect_any_bytes)
        add("tunnel", "5 KB Sec-WebSocket-Key",
            http(b"GET", b"/connect", [*upgrade[:3], b"Sec-WebSocket-Key: " + b"A" * 5000, *auth],
                 close=False),
            expect=expect_error_status(one_line_body=False))
        add("tunnel", "upgrade over HTTP/1.0",
            http(b"GET", b"/connect", [*upgrade, *auth], version=b"HTTP/1.0"), expect=expect_error_status())
        add("tunnel", "wrong token", http(b"GET", b"/connect", [*upgrade, b"X-Tunnel-ID: fuzzv",
                                                                b"Authorization: Bearer wrong"], close=False),
            expect=expect_status(401, one_line_body=True))
        add("tunnel", "ESC and U+009B in X-Tunnel-ID", http(b"GET", b"/connect", [
            *upgrade, b"X-Tunnel-ID: \x1b[31mfoo\xc2\x9b",
            b"Authorization: Bearer " + self.tokens["fuzzv"].encode()], close=False),
            expect=expect_error_status())
        add("tunnel", "peer id with control chars", http(b"GET", b"/connect", [
            *upgrade, b"X-API-Tunnel-ID: \x1b[2Jpeer\xc2\x9b", b"X-API-Tunnel-Token: t"], close=False),
            expect=expect_error_status())
        # 4. Sizes.
        for name, extra in self._size_cases(own=True):
            add("tunnel", name, http(b"GET", b"/connect" + extra[0], [*auth, *extra[1]]),
                expect=extra[2])
        add("tunnel", "POST Content-Length 10^23",
            http(b"POST", b"/connect", [*auth, b"Content-Length: %d" % 10 ** 23], b"abc"))
        add("tunnel", "POST chunk size 2^112",
            http(b"POST", b"/connect", [*auth, b"Transfer-Encoding: chunked"], b"%x\r\nabc" % 2 ** 112))

        # Front door.
        # 2. Self-nesting through other spellings of 127.0.0.1, and the admin port.
        for host in (b"0x7f.1:%d" % F, b"2130706433:%d" % T, b"127.1:%d" % C, b"0177.0.0.1:%d" % S,
                     b"[::ffff:127.0.0.1]:%d" % W, b"127.0.0.1:%d" % A) if not SKIP_NESTING else ():
            path = b"/status" if host.endswith(b":%d" % A) else self.demo_path()
            add("frontdoor", f"nested: target {host.decode()}",
                http(b"GET", self.demo_path(path, host=host) + b"?timeout=3", [pa]),
                expect=expect_status(403, one_line_body=True))
        # 3. HEAD with long URIs; a target over 266 bytes.
        long_query = b"?" + b"a" * 15000
        for name, path in [("HEAD 15 KB URI, 200 from the demo", self.demo_path(b"/hello.txt" + long_query)),
                           ("HEAD 15 KB URI, unknown client", self.demo_path(long_query, client=b"nobody")),
                           ("HEAD 15 KB URI, not allowed by the client",
                            self.demo_path(long_query, host=b"127.0.0.2:%d" % D)),
                           ("HEAD 15 KB URI, outside /client/", b"/nothing" + long_query)]:
            add("frontdoor", name, http(b"HEAD", path, [pa]), expect=expect_any_bytes)
        add("frontdoor", "HEAD with byte 0x9b in the target host", http(
            b"HEAD", self.demo_path(b"/hello.txt", host=b"\x9b.0.0.1:%d" % D), [pa]), expect=expect_any_bytes)
        add("frontdoor", "HEAD with byte 0x9b in the path", http(
            b"HEAD", self.demo_path(b"/hello\x9b.txt"), [pa]), expect=expect_any_bytes)
        add("frontdoor", "target of 300 bytes",
            http(b"GET", self.demo_path(b"/", host=b"a" * 300 + b":80"), [pa]), expect=expect_error_status())
        add("frontdoor", "target of 300 bytes (IP, long port)",
            http(b"GET", self.demo_path(b"/", host=b"127.0.0.1:" + b"0" * 290 + b"80"), [pa]),
            expect=expect_error_status())
        # 4. Sizes.
        for name, extra in self._size_cases(own=False):
            add("frontdoor", name, http(b"GET", self.demo_path(b"/hello.txt" + extra[0]), [pa, *extra[1]]),
                expect=extra[2])
        add("frontdoor", "POST chunk size 2^112",
            http(b"POST", self.demo_path(), [pa, b"Transfer-Encoding: chunked"], b"%x\r\nabc" % 2 ** 112))
        add("frontdoor", "POST Content-Length 10^23",
            http(b"POST", self.demo_path(), [pa, b"Content-Length: %d" % 10 ** 23], b"abc"))
        add("frontdoor", "POST Content-Length -1",
            http(b"POST", self.demo_path(), [pa, b"Content-Length: -1"], b"a"))
        add("frontdoor", "two different Content-Lengths",
            http(b"POST", self.demo_path(), [pa, b"Content-Length: 1", b"Content-Length: 2"], b"ab"))
        add("frontdoor", "Content-Length with chunked",
            http(b"POST", self.demo_path(), [pa, b"Content-Length: 3", b"Transfer-Encoding: chunked"],
                 b"0\r\n\r\n"))
        for name, path in [("target [::1 (no bracket)", self.demo_path(b"/", host=b"[::1")),
                           ("port 0", self.demo_path(b"/", host=b"127.0.0.1:0")),
                           ("port 99999", self.demo_path(b"/", host=b"127.0.0.1:99999")),
                           ("scheme gopher", b"/client/foo/gopher/127.0.0.1:%d/" % D),
                           ("client %00", self.demo_path(client=b"%00")),
                           ("client with ESC", self.demo_path(client=b"%1b[31mfoo")),
                           ("?timeout=-1", self.demo_path(b"/hello.txt?timeout=-1")),
                           ("?timeout=1e309", self.demo_path(b"/hello.txt?timeout=1e309")),
                           ("target host with U+009B", self.demo_path(b"/", host=b"a%c2%9bb:80"))]:
            add("frontdoor", name, http(b"GET", path, [pa]), expect=expect_error_status(one_line_body=False))
        # ?timeout= is the front door's only as a number of seconds: any other is the target's.
        add("frontdoor", "?timeout=nan (the target's)",
            http(b"GET", self.demo_path(b"/hello.txt?timeout=nan"), [pa]), expect=expect_status(200))
        add("frontdoor", "no Proxy-Authorization", http(b"GET", self.demo_path()),
            expect=expect_status(407, one_line_body=True))
        add("frontdoor", "HTTP/2 preface on cleartext", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

        # Admin endpoint.
        for name, path in [("HEAD / with a 15 KB URI", b"/" + long_query), ("HEAD /status, 15 KB URI",
                                                                              b"/status" + long_query),
                           ("HEAD 404, 15 KB URI", b"/nope" + long_query), ("HEAD /", b"/"),
                           ("HEAD with byte 0x9b in the path", b"/nope\x9b")]:
            add("admin", name, http(b"HEAD", path), expect=expect_any_bytes)
        add("admin", "POST chunk size 2^112",
            http(b"POST", b"/status", [b"Transfer-Encoding: chunked"], b"%x\r\nabc" % 2 ** 112))
        add("admin", "POST Content-Length 10^23",
            http(b"POST", b"/status", [b"Content-Length: %d" % 10 ** 23], b"abc"))
        for name, extra in self._size_cases(own=True):
            add("admin", name, http(b"GET", b"/healthz" + extra[0], extra[1]), expect=extra[2])
        for path in (b"/status?limit=-1", b"/status?limit=1e309", b"/status?limit=abc",
                     b"/status?limit=99999999999999999999", b"/?refresh=-1", b"/?refresh=nan",
                     b"/?refresh=1e309",
                     b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/status%00", b"/\xc2\x9b"):
            add("admin", f"GET {path.decode('latin-1')!r}", http(b"GET", path), expect=expect_any_bytes)
        add("admin", "metrics, Accept-Encoding gzip;q=nan",
            http(b"GET", b"/metrics", [b"Accept-Encoding: gzip;q=nan, *;q=1e309"]), expect=expect_any_bytes)

        # CONNECT proxy.
        nested = [(b"0x7f.1", T), (b"2130706433", C), (b"127.1", S), (b"0177.0.0.1", W),
                  (b"[::ffff:127.0.0.1]", C), (b"127.0.0.1", A), (b"0x7f.1", F)]
        for host, port in nested if not SKIP_NESTING else ():
            add("connect", f"nested: CONNECT {host.decode()}:{port}",
                self.connect_request(b"%s:%d" % (host, port)), expect=expect_status(403, one_line_body=True))
        for size in (70, 200):
            add("connect", f"head of {size} KiB",
                self.connect_request(b"127.0.0.1:%d" % D, [b"X-Pad: " + b"p" * (size * 1000)]),
                expect=expect_status(431, one_line_body=True))
        add("connect", "head of 40 KiB (allowed)", self.connect_request(b"127.0.0.1:%d" % D,
                                                                         [b"X-Pad: " + b"p" * 40000]),
            expect=expect_status(200))
        add("connect", "GET instead of CONNECT", http(b"GET", b"http://127.0.0.1:%d/" % D, [self.basic]),
            expect=expect_status(405, one_line_body=True))
        add("connect", "no Host", b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n%s\r\n\r\n" % (D, self.basic),
            expect=expect_status(400, one_line_body=True))
        add("connect", "target without a port", self.connect_request(b"127.0.0.1"),
            expect=expect_status(400, one_line_body=True))
        add("connect", "Basic credentials not base64", self.connect_request(b"127.0.0.1:%d" % D)
            .replace(self.basic, b"Proxy-Authorization: Basic %%%"),
            expect=expect_status(400, one_line_body=True))
        add("connect", "user name with ESC and U+009B", self.connect_request(b"127.0.0.1:%d" % D).replace(
            self.basic, b"Proxy-Authorization: Basic " + base64.b64encode(
                b"\x1b[31mfoo\xc2\x9b:" + self.proxy_token.encode())), expect=expect_error_status())
        add("connect", "Content-Length 10^23", self.connect_request(b"127.0.0.1:%d" % D,
                                                                     [b"Content-Length: %d" % 10 ** 23]),
            expect=expect_status(400, one_line_body=True))
        add("connect", "target with U+009B", self.connect_request(b"127.0.0.\xc2\x9b1:%d" % D),
            expect=expect_error_status())
        add("connect", "head never finished (closed by the head timeout)",
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % D, complete=False,
            expect=expect_closed_within(HEAD_TIMEOUT + 5), deadline=HEAD_TIMEOUT + 5, linger=None)

        # SOCKS5.
        for host, port in nested if not SKIP_NESTING else ():
            if host.startswith(b"["):
                data = self.socks_request(host.strip(b"[]"), port, atyp=4)
            else:
                data = self.socks_request(host, port)
            add("socks", f"nested: {host.decode()}:{port}", data, expect=expect_socks_reply(2))
        add("socks", "nested: IPv6 ::1 to the admin port", self.socks_request(b"::1", A, atyp=4),
            expect=expect_socks_reply(2))
        for name, data in [("version 4 (SOCKS4)", b"\x04\x01\x00\x50\x7f\x00\x00\x01foo\x00"),
                           ("version 0", b"\x00\x01\x00"), ("version 6", b"\x06\x01\x02"),
                           ("version 0xff", b"\xff" * 8), ("an HTTP request", http(b"GET", b"/")),
                           ("no methods", b"\x05\x00"), ("only no-authentication", b"\x05\x01\x00"),
                           ("auth version 2", b"\x05\x01\x02\x02\x03foo\x03bar"),
                           ("user 255, password 255 (wrong), C1 bytes",
                            b"\x05\x01\x02\x01\xff" + b"\x9b" * 255 + b"\xff" + b"\x1b" * 255),
                           ("request version 4", self.socks_request(b"127.0.0.1", D).replace(
                               b"\x05\x01\x00\x03", b"\x04\x01\x00\x03")),
                           ("BIND", self.socks_request(b"127.0.0.1", D).replace(
                               b"\x05\x01\x00\x03", b"\x05\x02\x00\x03")),
                           ("UDP ASSOCIATE", self.socks_request(b"127.0.0.1", D).replace(
                               b"\x05\x01\x00\x03", b"\x05\x03\x00\x03")),
                           ("address type 9", self.socks_request(b"127.0.0.1", D).replace(
                               b"\x05\x01\x00\x03", b"\x05\x01\x00\x09")),
                           ("empty host name", self.socks_request(b"", D)),
                           ("host with ESC and U+009B", self.socks_request(b"a\x1b[31m\xc2\x9b", D)),
                           ("port 0", self.socks_request(b"127.0.0.1", 0)),
                           ("user name with ESC", self.socks_request(b"127.0.0.1", D, user=b"\x1b[31mfoo")),
                           ("300 KiB of early data",
                            self.socks_request(b"127.0.0.1", D, then=b"x" * 300000))]:
            closing_is_fine = name.startswith(("version 0", "version 6")) or "early" in name
            add("socks", name, data, expect=None if closing_is_fine else expect_any_bytes)
        for name, data in [("truncated greeting: 05", b"\x05"),
                           ("truncated greeting: 05 03 00", b"\x05\x03\x00"),
                           ("truncated: user length 255, 20 bytes sent", b"\x05\x01\x02\x01\xff" + b"u" * 20),
                           ("truncated: password length 255, none sent", b"\x05\x01\x02\x01\x03foo\xff"),
                           ("truncated request", self.socks_request(b"127.0.0.1", D)[:-3])]:
            add("socks", name, data, complete=False, expect=expect_closed_within(HEAD_TIMEOUT + 5),
                deadline=HEAD_TIMEOUT + 5, linger=None)

        # The port forward: whatever comes is the demo's to answer; the server must only relay.
        add("forward", "binary junk, then a head", b"\x00\xff\x9b" * 100 + b"\r\n\r\n", expect=None)
        add("forward", "HTTP/1.1 with a 15 KB URI", http(b"GET", b"/" + b"a" * 15000),
            expect=expect_any_bytes)
        add("forward", "200 KiB at once", b"x" * 200000, complete=False)
        return [c for c in cases if c is not None]

    @staticmethod
    def _size_cases(own: bool):
        """
        (name, (path suffix, extra headers, expectation)): heads between 16 and 64 KiB (within the
        documented limit: taken, and answered by the resource, or with C{own=False} by the front
        door's target), and over it (431).
        """
        taken = expect_taken(one_line_error=own)
        return [
            ("head of 16.5 KiB (URI)", (b"?" + b"q" * 16500, [], taken)),
            ("head of 32 KiB (one header)", (b"", [b"X-Pad: " + b"p" * 32000], taken)),
            ("head of 60 KiB (30 headers)",
             (b"", [b"X-Pad-%d: " % i + b"p" * 2000 for i in range(30)], taken)),
            ("head over 64 KiB", (b"", [b"X-Pad: " + b"p" * 70000], expect_status(431, one_line_body=True))),
            ("120 header lines",
             (b"", [b"X-H%d: v" % i for i in range(120)], expect_status(431, one_line_body=True))),
        ]

    def observe(self, listener: str, name: str, answer: Answer) -> None:
        """
        Note (not assert) an answer that echoes control characters or is
        over 1 KiB in its status line or error text: what a caller's
        terminal shows (curl prints an error body).
        """
        status = http_status(answer.data)
        if status is None:
            return
        status_line = answer.data.split(b"\r\n", 1)[0]
        body = http_body(answer.data) if status >= 400 else b""
        for what, text in (("status line", status_line), ("error body", body[:4096])):
            decoded = text.decode("utf-8", "replace").rstrip("\n")
            control = bool(_CONTROL.search(decoded))
            if (control or len(text) > 1024) and len(self.record.observations) < 100:
                self.record.observations.append(
                    f"{listener}: {name}: {what} of {len(text)} bytes"
                    f"{' with control characters' if control else ''}: {_short(text, 120)}")

    # Running the cases.

    async def run_case(self, case: Case) -> None:
        source = case.source or (fresh_source() if case.listener == "tunnel" else "127.0.0.1")
        answer = await probe(self.port_of(case.listener), case.data, case.deadline, source,
                             linger=case.linger)
        self.observe(case.listener, case.name, answer)
        verdict = "ok"
        if case.complete and answer.hang:
            verdict = f"HANG: no answer and no close within {case.deadline:g} s"
        elif case.expect is not None:
            wrong = case.expect(answer)
            if wrong is not None:
                verdict = wrong
        self.record.fixed.append((case.listener, case.name, describe(case.listener, answer), verdict))
        if verdict != "ok":
            kind = "hang" if verdict.startswith("HANG") else "fixed case"
            got = describe(case.listener, answer)
            self.record.problem(kind, f"{case.listener}: {case.name}: {verdict}; got {got}")

    async def run_fixed(self) -> None:
        semaphore = defer.DeferredSemaphore(FIXED_CONCURRENCY)
        cases = self.fixed_cases()
        await defer.gatherResults([semaphore.run(lambda c=c: run(self.run_case(c))) for c in cases],
                                  consumeErrors=True)

    # Mutations.

    async def mutation_worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-mutations-{index}")
        valid = self.valid_requests()
        names = sorted(valid) + ["frontdoor-junk"] * 2
        password = self.proxy_token.encode()
        for _ in range(1_000_000):
            if reactor.seconds() >= self.stop_at:
                return
            listener = rng.choice(names)
            if listener == "frontdoor-junk":
                behaviour = rng.randrange(len(JUNK_ANSWERS))
                path = b"/junk/%d/%d?timeout=2" % (behaviour, rng.randrange(2 ** 32))
                data = http(b"GET", self.demo_path(path, client=b"fuzzr"), [self.pa])
                answer = await probe(self.ports["frontdoor"], data, HANG_DEADLINE + 2)
                kind, complete = "http", True
                label = f"frontdoor-junk: {JUNK_ANSWERS[behaviour][0]}"
                self.observe("frontdoor-junk", JUNK_ANSWERS[behaviour][0], answer)
            else:
                kind, base = valid[listener]
                data = self.mutator.mutate(base, rng)
                if kind == "socks":
                    complete = socks_complete(data, password)
                elif kind == "connect":
                    complete = b"\r\n\r\n" in data
                else:
                    complete = http_complete(data)
                    if listener.startswith("frontdoor"):
                        # Only a request that still has its timeout is bounded (else 15 s, the default).
                        complete = complete and b"timeout=2 " in data.split(b"\r\n", 1)[0] + b" "
                source = fresh_source() if listener == "tunnel" else "127.0.0.1"
                # (an incomplete input is not waited for: nothing is asserted of it)
                answer = await probe(self.port_of(listener), data, HANG_DEADLINE if complete else 0.5, source,
                                     linger=0.3)
                label = listener
            outcome = outcome_class(kind, answer)
            if not complete and answer.hang:
                outcome = "no answer (input incomplete)"
            self.record.mutations[label][outcome] += 1
            example_key = (label, outcome)
            if example_key not in self.record.mutation_examples:
                example = f"{_short(data, 160)} -> {describe(kind, answer)}"
                self.record.mutation_examples[example_key] = example
            if complete and answer.hang:
                self.record.problem("hang", f"{label}: no answer and no close within {HANG_DEADLINE:g} s to "
                                            f"{_short(data, 300)} (seed {self.seed}, worker {index})")

    # Hand-made tunnel sessions.

    async def session_cases(self) -> None:
        """Fixed inputs to a session of client fuzz; each its own session."""
        T, F, A, D = self.ports["tunnel"], self.ports["frontdoor"], self.ports["admin"], self.ports["demo"]
        get_demo = self.demo_get()

        async def new():
            session = await open_session(T, "fuzz", self.tokens["fuzz"], source=fresh_source())
            if session is None:
                self.record.problem("tunnel session", "a valid upgrade of client fuzz failed")
            return session

        def note(name: str, outcome: str, problem: str | None = None) -> None:
            self.record.fixed.append(("tunnel-session", name, outcome, problem or "ok"))
            if problem:
                self.record.problem("tunnel session", f"{name}: {problem}; got {outcome}")

        # A client session's Connect naming another client (the peers' form) or the server's own
        # listeners must not be dialed (and must never bring back the target's bytes).
        for name, target, request in [
                ("client-side Connect to foo::tcp/<demo> (another client's network)",
                 b"foo::tcp/127.0.0.1:%d" % D, get_demo),
                ("client-side Connect to the admin port", b"tcp/127.0.0.1:%d" % A, http(b"GET", b"/status")),
                ("client-side Connect to the front door", b"tcp/127.0.0.1:%d" % F,
                 http(b"GET", self.demo_path(), [self.pa]))]:
            session = await new()
            if session is None:
                continue
            session.send(2, CONNECT, target)
            session.send(2, DATA, request)
            data = await session.wait_for(lambda t, c, p: c == 2 and t in (DATA, ERROR), HANG_DEADLINE)
            if data is None:
                note(name, "nothing for stream 2" + (" (session closed)" if session.is_closed else ""),
                     None if session.is_closed else "expected an Error for the stream")
            elif data[0] == DATA:
                note(name, f"Data: {_short(data[2], 80)}",
                     "the server dialed it and relayed the target's bytes")
            else:
                note(name, f"Error: {_short(data[2], 100)}")
            session.close()

        # AddClient from a client session must not make it a route to that client.
        session = await new()
        if session is not None:
            session.send(0, ADD_CLIENT, b"ghost/1")
            answer = await probe(F, http(b"GET", self.demo_path(client=b"ghost") + b"?timeout=2", [self.pa]))
            routed = [m for m in session.received if m[0] == CONNECT]
            if routed:
                wrong = "the server routed ghost's dial to the client that claimed it"
            else:
                wrong = None if http_status(answer.data) == 500 else "expected 500 (no session for ghost)"
            note("AddClient ghost/1 from a client, then the front door for ghost",
                 describe("frontdoor", answer), wrong)
            session.close()

        # Data for an unknown stream is answered with an Error (PROTOCOL.md, section 4).
        session = await new()
        if session is not None:
            session.send(77, DATA, b"hello")
            reply = await session.wait_for(lambda t, c, p: c == 77 and t == ERROR, HANG_DEADLINE)
            note("Data for an unknown stream", f"Error: {_short(reply[2], 100)}" if reply else "nothing",
                 None if reply else "expected an Error for stream 77")
            session.close()

        # Frames that must end the session, promptly.
        for name, frame in [("a text message", ws_frame(b"hello", opcode=1)),
                            ("a frame claiming 2^63-1 bytes", ws_frame(b"", length=2 ** 63 - 1)),
                            ("a frame claiming 2 MiB (over the 1 MiB limit)",
                             ws_frame(b"", length=2 * 1024 * 1024)),
                            ("an unmasked frame", ws_frame(message(1, 2, DATA, b"x"), masked=False)),
                            ("reserved bits set", ws_frame(message(1, 2, DATA, b"x"), rsv=7)),
                            ("opcode 3", ws_frame(b"x", opcode=3))]:
            session = await new()
            if session is None:
                continue
            session.send_frame(frame)
            closed = await within(session.lost, HANG_DEADLINE)
            close_frame = session.close_frame
            outcome = ("closed" if closed else "still open") + (
                f", close frame {_short(close_frame, 80)}" if close_frame else "")
            note(name, outcome, None if closed else f"expected the session closed within {HANG_DEADLINE:g} s")
            session.abort()

        # Inputs whose only check is the logs (and that the server lives).
        for name, frames in [
                ("close frame with ESC and U+009B in the reason",
                 [ws_frame(b"\x03\xe8" + b"\xc2\x9b\x1b[31mred", opcode=8)]),
                ("Error with 5 KB and control characters, unknown stream",
                 [ws_frame(message(1, 5, ERROR, b"\x1b[2J\xc2\x9b" + b"E" * 5000 + b"\x00\r\nfake line"))]),
                ("Connect with a 300-byte target",
                 [ws_frame(message(1, 9, CONNECT, b"tcp/" + b"a" * 300 + b":1"))]),
                ("Connect with control characters",
                 [ws_frame(message(1, 11, CONNECT, b"tcp/\x1b[31m\xc2\x9b:1"))]),
                ("varint overflow", [ws_frame(b"\xff" * 10 + b"\x7f")]),
                ("SyncConnections of 7 bytes", [ws_frame(message(1, 0, SYNC, b"\x01" * 7))]),
                ("RemoveClient foo/1 from a client", [ws_frame(message(1, 0, REMOVE_CLIENT, b"foo/1"))])]:
            session = await new()
            if session is None:
                continue
            for frame in frames:
                session.send_frame(frame)
            await within(session.lost, 1.0)
            note(name, "closed" if session.is_closed else "still open")
            session.abort()

    async def session_fuzz(self) -> None:
        """Random frames on sessions of client fuzz, until the time is up."""
        rng = random.Random(f"{self.seed}-sessions")
        T = self.ports["tunnel"]
        for _ in range(100_000):
            if reactor.seconds() >= self.stop_at:
                return
            session = await open_session(T, "fuzz", self.tokens["fuzz"], source=fresh_source())
            if session is None:
                self.record.problem("tunnel session", "a valid upgrade of client fuzz failed (fuzzing)")
                await wait(0.5)
                continue
            all_whole = True
            kinds = []
            for i in range(rng.randint(1, 30)):
                frame, kind, whole = junk_frame(rng, 1000 + i)
                kinds.append(kind)
                self.record.sessions[kind] += 1
                session.send_frame(frame)
                all_whole = all_whole and whole
                if not whole:
                    break
            closed = await within(session.lost, 0.5)
            if closed:
                self.record.session_outcomes["closed by the server"] += 1
            elif all_whole:
                # Still open: it must still answer (Data for an unknown stream gets an Error).
                session.send(123456, DATA, b"ping?")
                reply = await session.wait_for(lambda t, c, p: c == 123456 and t == ERROR, HANG_DEADLINE)
                if reply is not None:
                    self.record.session_outcomes["open, still answering"] += 1
                elif session.is_closed:
                    self.record.session_outcomes["closed by the server"] += 1
                else:
                    self.record.session_outcomes["open, NOT answering"] += 1
                    self.record.problem("tunnel session", f"a session left open after {kinds} no longer "
                                                          f"answers (seed {self.seed})")
            else:
                self.record.session_outcomes["open, waiting for the rest of a frame"] += 1
            session.abort()
            await within(session.lost, HANG_DEADLINE)

    # Valid requests.

    async def valid_round(self, round_no: int, streams: dict[str, KeepAliveStream]) -> None:
        p = self.ports
        checks: list[tuple[str, defer.Deferred, Callable[[Answer], bool]]] = []

        def add(name, d, ok):
            checks.append((name, d, ok))

        demo_ok = lambda a: http_status(a.data) == 200 and a.data.endswith(DEMO_BODY)  # noqa: E731
        add("front door, client foo", run(probe(p["frontdoor"], http(
            b"GET", self.demo_path(b"/hello.txt?timeout=5"), [self.pa]))), demo_ok)
        add("front door, hand-made client fuzzr", run(probe(p["frontdoor"], http(
            b"GET", self.demo_path(b"/valid?timeout=5", client=b"fuzzr"), [self.pa]))),
            lambda a: http_status(a.data) == 200 and a.data.endswith(b"valid\n"))
        add("admin /healthz", run(probe(p["admin"], http(b"GET", b"/healthz"))),
            lambda a: http_status(a.data) == 200 and a.data.endswith(b"ok\n"))
        add("admin /status", run(probe(p["admin"], http(b"GET", b"/status"))),
            lambda a: http_status(a.data) == 200 and b'"clients"' in a.data)
        add("CONNECT proxy", run(probe(p["connect"], self.connect_request(b"127.0.0.1:%d" % p["demo"],
                                                                           then=self.demo_get()))),
            lambda a: a.data.startswith(b"HTTP/1.1 200") and a.data.endswith(DEMO_BODY))
        add("SOCKS5", run(probe(p["socks"], self.socks_request(b"127.0.0.1", p["demo"],
                                                               then=self.demo_get()))),
            lambda a: a.data[:6] == b"\x05\x02\x01\x00\x05\x00" and a.data.endswith(DEMO_BODY))
        add("port forward", run(probe(p["forward"], self.demo_get())), demo_ok)
        add("tunnel upgrade (client fuzzv)", run(probe(
            p["tunnel"], http(b"GET", b"/connect", [*self.UPGRADE, *self.tunnel_auth()], close=False),
            stop_when=lambda data: b"\r\n\r\n" in data)), lambda a: http_status(a.data) == 101)
        for name, stream in streams.items():
            add(f"long-lived stream through {name}", run(stream.get()), None)
        for name, d, ok in checks:
            try:
                result = await d
            except Exception as e:
                self.record.problem("test", f"round {round_no}: {name}: the check itself failed: {e!r}")
                continue
            if ok is None:
                good = result is not None and result == DEMO_BODY
                text = "lost" if result is None else _short(result, 80)
            else:
                good = ok(result)
                text = describe("socks" if name.startswith("SOCKS") else "http", result)
            self.record.valid[(name, good)] += 1
            if not good:
                self.record.problem("valid request", f"round {round_no}: {name}: {text}")

    async def open_streams(self) -> dict[str, KeepAliveStream]:
        p = self.ports
        streams = {}
        specs = {
            "the CONNECT proxy": (p["connect"], self.connect_request(b"127.0.0.1:%d" % p["demo"]),
                                  lambda d: (d.find(b"\r\n\r\n") + 4) if b"\r\n\r\n" in d else None),
            "SOCKS5": (p["socks"], self.socks_request(b"127.0.0.1", p["demo"]),
                       lambda d: 14 if len(d) >= 14 else None),
        }
        for name, (port, handshake, size) in specs.items():
            stream = KeepAliveStream(handshake, size)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), stream)
            await within(stream.ready, HANG_DEADLINE)
            streams[name] = stream
        return streams


class FuzzProgramsTests(ProgramTestCase):
    """The fuzz run (see the module docstring)."""

    timeout = FUZZ_SECONDS + 240

    def test_fuzz(self):
        return run(self._fuzz())

    async def _fuzz(self):
        seed = _seed()
        started = time.monotonic()
        print(f"\nfuzz seed {seed} (REMOTEDIALER_FUZZ_SEED={seed} to repeat), {FUZZ_SECONDS:g} s "
              f"(REMOTEDIALER_FUZZ_SECONDS)", file=sys.stderr)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "www"))
        fuzz = Fuzz(self, directory, seed)
        self.addCleanup(self._abort_connections)
        with open(os.path.join(directory, "www", "hello.txt"), "wb") as f:
            f.write(DEMO_BODY)
        with open(os.path.join(directory, "clients"), "w") as f:
            for key, token in fuzz.tokens.items():
                f.write(f"{key} sha256:{hash_token(token)}\n")
        with open(os.path.join(directory, "frontdoor-tokens"), "w") as f:
            f.write(f"sha256:{hash_token(fuzz.proxy_token)}\n")
        with open(os.path.join(directory, "foo.token"), "w") as f:
            f.write(fuzz.tokens["foo"] + "\n")
        logs = {name: os.path.join(directory, f"{name}.log") for name in ("server", "client", "demo")}

        server = await self._start_server(fuzz, directory, logs["server"])
        demo = self.spawn("-n", "--pidfile=", "--logfile", logs["demo"], "web",
                          "--listen", f"tcp:{fuzz.ports['demo']}:interface=127.0.0.1",
                          "--path", os.path.join(directory, "www"))
        client = self.spawn("-n", "--pidfile=", "--logfile", logs["client"], "remotedialer-client",
                            "--connect", f"ws://127.0.0.1:{fuzz.ports['tunnel']}/connect", "--id", "foo",
                            "--token-file", os.path.join(directory, "foo.token"),
                            "--allow", "tcp/127.0.0.1:*")
        programs = {"server": server, "client": client, "demo": demo}
        # Until the demo answers through client foo's tunnel.
        for _ in range(300):
            request = http(b"GET", fuzz.demo_path(b"/hello.txt?timeout=5"), [fuzz.pa])
            answer = await probe(fuzz.ports["frontdoor"], request)
            if answer.data.endswith(DEMO_BODY) or not all(p.running for p in programs.values()):
                break
            await wait(0.1)
        self.assertTrue(answer.data.endswith(DEMO_BODY), f"no demo page through the tunnel: {answer}")
        responder = await open_session(fuzz.ports["tunnel"], "fuzzr", fuzz.tokens["fuzzr"], fuzz.responder)
        self.assertIsNotNone(responder, "the hand-made client fuzzr could not connect")

        # Warm up, then the baseline of the server's open files and memory.
        for warm_up in range(3):
            await fuzz.valid_round(-warm_up, {})
        pid = server.transport.pid
        fd_before, rss_before = open_files(pid), rss(pid)
        fuzz.fds_before = self._fd_kinds(pid)
        streams = await fuzz.open_streams()
        set_up = time.monotonic() - started

        fuzz.stop_at = reactor.seconds() + FUZZ_SECONDS
        workers = [run(fuzz.run_fixed()), run(fuzz.session_cases()), run(fuzz.session_fuzz())]
        workers += [run(fuzz.mutation_worker(i)) for i in range(WORKERS)]
        round_no = 0
        dead: set[str] = set()
        try:
            for round_no in range(1, 100_000):  # a valid request through each path every second
                if reactor.seconds() >= fuzz.stop_at:
                    break
                tick = reactor.seconds()
                await fuzz.valid_round(round_no, streams)
                for name, program in programs.items():
                    if not program.running and name not in dead:
                        dead.add(name)
                        fuzz.record.problem("process", f"the {name} program died during round {round_no}: "
                                                       f"exit {program.exit_code}, signal {program.signal}")
                left = 1.0 - (reactor.seconds() - tick)
                if left > 0:
                    await wait(left)
        finally:
            fuzz.stop_at = 0.0  # (if this loop failed: the workers stop too, each within its deadline)
            results = await defer.DeferredList(workers, consumeErrors=True)
        for ok, result in results:
            if not ok:
                fuzz.record.problem("test", f"a fuzzing worker failed: {result.getTraceback()[-1500:]}")
        await fuzz.valid_round(round_no + 1, streams)
        fuzzed = time.monotonic() - started - set_up

        for name, program in programs.items():
            if not program.running and name not in dead:
                fuzz.record.problem("process", f"the {name} program died: exit {program.exit_code}, "
                                               f"signal {program.signal}")
        # Everything of ours closed: the server's open files and memory come back.
        for stream in streams.values():
            stream.abort()
        responder.close()
        self._abort_connections()
        try:  # (an aborted connection is closed on the reactor's next turn)
            await eventually(lambda: not _LIVE, timeout=HANG_DEADLINE)
        except AssertionError:
            fuzz.record.problem("test", f"connections of the test still open: {_LIVE}")
        fd_after = rss_after = None
        if server.running:
            try:
                await eventually(lambda: open_files(pid) <= fd_before + 2, timeout=15)
            except AssertionError:
                pass
            fd_after, rss_after = open_files(pid), rss(pid)
            owners = {"the test": os.getpid(), **{name: program.transport.pid for name, program
                                                  in programs.items() if program.running}}
            fuzz.fds_after = self._fd_kinds(pid, owners)
            if fd_after > fd_before + FD_SLACK:
                fuzz.record.problem("open files", f"the server had {fd_before} open files before the "
                                                  f"fuzzing, {fd_after} after it (waited up to 15 s): "
                                                  f"{fuzz.fds_after} (before: {fuzz.fds_before})")
            if rss_after > rss_before + RSS_SLACK:
                fuzz.record.problem("memory", f"the server's RSS grew from {rss_before / 2**20:.1f} MiB to "
                                              f"{rss_after / 2**20:.1f} MiB")
        for program in (client, demo, server):
            await program.terminate(grace=10)

        for name in ("server", "client"):
            text = read_logs(logs[name]) + programs[name].out + programs[name].err
            self._check_log(fuzz.record, name, text)
        report = self._report(fuzz, logs, fd_before, fd_after, rss_before, rss_after, set_up, fuzzed,
                              time.monotonic() - started)
        path = os.environ.get("REMOTEDIALER_FUZZ_REPORT") or os.path.join(directory, "fuzz-report.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(report)
        print(f"fuzz report: {path}", file=sys.stderr)
        if fuzz.record.problems:
            summary = [f"fuzz seed {seed}: {sum(map(len, fuzz.record.problems.values()))} problems "
                       f"(report: {path})"]
            for kind, items in fuzz.record.problems.items():
                summary.append(f"{kind} ({len(items)}):")
                summary += [f"  - {item}" for item in items[:40]]
            self.fail("\n".join(summary))

    async def _start_server(self, fuzz: Fuzz, directory: str, log: str):
        """The server with every listener, on free ports picked beforehand (own_ports needs them)."""
        for _ in range(3):
            names = ("tunnel", "frontdoor", "connect", "socks", "forward", "admin", "demo")
            fuzz.ports = dict(zip(names, free_ports(len(names)), strict=True))
            p = fuzz.ports
            server = self.spawn(
                "-n", "--pidfile=", "--logfile", log, "remotedialer-server",
                "--listen", f"tcp:{p['tunnel']}:interface=127.0.0.1",
                "--clients-file", os.path.join(directory, "clients"),
                "--frontdoor-tokens-file", os.path.join(directory, "frontdoor-tokens"),
                "--frontdoor-listen", f"tcp:{p['frontdoor']}:interface=127.0.0.1",
                "--connect-proxy-listen", str(p["connect"]), "--socks-listen", str(p["socks"]),
                "--forward", f"{p['forward']}=foo:tcp/127.0.0.1:{p['demo']}",
                "--admin-listen", str(p["admin"]), "--drain-timeout", "2",
                # Idle kept-alive front-door connections (streams, and at the client connections
                # to targets, some of them this server's own listeners while nesting is let
                # through) close soon, so that the open files can come back before the end.
                "--frontdoor-idle-timeout", str(FRONTDOOR_IDLE))

            def started(server=server):
                return not server.running or read_logs(log).count(b" starting on ") >= 6

            await eventually(started, timeout=30)
            if server.running:
                return server
            await server.terminate()
        self.fail(f"the server program would not start: {read_logs(log)[-2000:]!r}")

    @staticmethod
    def _fd_kinds(pid: int, owners: dict[str, int] | None = None) -> str:
        """
        The open files of C{pid}: kinds, and each TCP socket's ports and
        state, and which of C{owners} (name -> pid) holds its other end.
        """
        def socket_inodes(of: int) -> set[str]:
            found = set()
            try:
                names = os.listdir(f"/proc/{of}/fd")
            except OSError:
                return found
            for name in names:
                try:
                    target = os.readlink(f"/proc/{of}/fd/{name}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    found.add(target[8:-1])
            return found

        kinds = Counter()
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            kinds[target.split(":")[0] if ":" in target else "file"] += 1
        inodes = socket_inodes(pid)
        held = {inode: who for who, other in (owners or {}).items() for inode in socket_inodes(other)}
        states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "0A": "LISTEN",
                  "04": "FIN_WAIT1", "05": "FIN_WAIT2", "09": "LAST_ACK"}
        rows = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    rows += [row.split() for row in f.read().splitlines()[1:]]
            except OSError:
                continue
        by_port = {int(cols[1].split(":")[1], 16): cols[9] for cols in rows}
        sockets = []
        for cols in rows:
            if cols[9] in inodes:
                local, remote = (int(c.split(":")[1], 16) for c in (cols[1], cols[2]))
                other = held.get(by_port.get(remote, ""), "")
                sockets.append(f"{local}<-{remote}{' (' + other + ')' if other else ''} "
                               f"{states.get(cols[3], cols[3])}")
        return ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + "; TCP: " + ", ".join(sorted(sockets))

    @staticmethod
    def _abort_connections() -> None:
        for protocol in list(_LIVE):
            protocol.abort()

    @staticmethod
    def _check_log(record: Record, name: str, text: bytes) -> None:
        seen: dict[str, int] = Counter()

        def problem(kind: str, line: bytes) -> None:
            seen[kind] += 1
            if seen[kind] <= 8:
                record.problem(f"log: {kind}", f"{name}.log: {_short(line, 220)} ({len(line)} bytes)")

        # twistd writes the further lines of a multi-line event with a tab in front: a
        # traceback's are reported once, as the Traceback; any other's are a line break
        # that reached the log from an event's text (the tab is the control character).
        block = None
        for line in text.split(b"\n"):
            continued = line.startswith(b"\t")
            if not continued:
                block = None
            elif block is None:
                block = "traceback" if b"Traceback" in line else "text"
            for word in BAD_WORDS:
                if word in line:
                    problem(f"'{word.decode()}'", line)
                    break
            if len(line) > LONGEST_LOG_LINE:
                problem(f"line over {LONGEST_LOG_LINE} bytes", line)
            decoded = line.decode("utf-8", "replace")
            found = _CONTROL.search(decoded[1:] if continued else decoded)
            if found:
                problem(f"control character U+{ord(found.group()):04X}", line)
            elif continued and block == "text":
                problem("control character: a line break in an event (its next line, tab-continued)", line)
                block = "reported"
            if _REPR.search(line):
                problem("Python repr", line)
        for kind, count in seen.items():
            if count > 8:
                record.problem(f"log: {kind}", f"{name}.log: ... {count} lines in all")

    @staticmethod
    def _report(fuzz: Fuzz, logs, fd_before, fd_after, rss_before, rss_after, set_up, fuzzed, total) -> str:
        r = fuzz.record
        out = [f"remotedialer fuzz report: seed {fuzz.seed}, fuzzing {FUZZ_SECONDS:g} s",
               f"time: set-up {set_up:.1f} s, fuzzing {fuzzed:.1f} s, whole test {total:.1f} s",
               f"ports: {fuzz.ports}", f"logs: {logs}",
               f"server open files {fd_before} -> {fd_after}; RSS "
               f"{rss_before / 2**20:.1f} -> {(rss_after or 0) / 2**20:.1f} MiB",
               f"  open files before: {getattr(fuzz, 'fds_before', '')}",
               f"  open files after:  {getattr(fuzz, 'fds_after', '')}",
               *([f"skipped: the nested cases (front door, CONNECT, SOCKS5): {SKIP_NESTING}"]
                 if SKIP_NESTING else []), ""]
        out.append("== Fixed cases ==")
        by_listener = defaultdict(list)
        for listener, name, answer, verdict in r.fixed:
            by_listener[listener].append((name, answer, verdict))
        for listener in sorted(by_listener):
            out.append(f"-- {listener}")
            for name, answer, verdict in by_listener[listener]:
                mark = "ok  " if verdict == "ok" else "FAIL"
                out.append(f"  {mark} {name}: {answer}" + ("" if verdict == "ok" else f"  <- {verdict}"))
        out += ["", "== Mutations (answers counted per class; one example each) =="]
        for label in sorted(r.mutations):
            counts = r.mutations[label]
            out.append(f"-- {label}: {sum(counts.values())} inputs")
            for outcome, count in counts.most_common():
                out.append(f"  {count:6d}  {outcome}    e.g. {r.mutation_examples.get((label, outcome), '')}")
        out += ["", "== Tunnel sessions: random frames sent, by kind =="]
        out += [f"  {count:6d}  {kind}" for kind, count in r.sessions.most_common()]
        out += ["  session outcomes: " + ", ".join(f"{k}: {n}" for k, n in r.session_outcomes.items())]
        out += ["  junk answers of the hand-made client fuzzr: " +
                ", ".join(f"{k}: {n}" for k, n in fuzz.responder.behaviours.most_common())]
        out += ["", "== Observations (not asserted): answers echoing control characters, or over 1 KiB =="]
        out += [f"  - {item}" for item in r.observations] or ["  none"]
        out += ["", "== Valid requests =="]
        for (name, good), count in sorted(r.valid.items()):
            out.append(f"  {count:5d} {'ok    ' if good else 'FAILED'} {name}")
        out += ["", "== Problems =="]
        if not r.problems:
            out.append("  none")
        for kind, items in r.problems.items():
            out.append(f"-- {kind} ({len(items)})")
            out += [f"  - {item}" for item in items]
        return "\n".join(out) + "\n"
