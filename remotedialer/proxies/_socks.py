"""
The server side of a SOCKS5 handshake (RFC 1928, with RFC 1929's
username/password method), without IO: bytes in, events out; decisions
in, bytes to send out (as h11 and h2 do it).  Twisted has no SOCKS5 server
(twisted.protocols.socks is SOCKS4), and the SOCKS5 libraries on PyPI are
clients or asyncio servers, so the handshake is here; the Twisted side is
L{remotedialer.proxies._socksproxy}.

Only what a proxy into a tunnel needs is accepted:

  - methods: username/password (chosen whenever the client offers it: the
    user name names the client) or, where allowed, no authentication;
  - the CONNECT command (BIND and UDP ASSOCIATE are answered "command not
    supported"), to an IPv4 or IPv6 address or a host name.

Anything else gets the reply the RFCs define for it where there is one
(no acceptable method C{0xFF}, authentication failure, command or address
type not supported), and a L{Failed} event: the connection is then closed
once the bytes are sent.  A client speaking SOCKS4 or HTTP to us gets a
refusal in its own protocol, saying this is SOCKS5.

Usage::

    machine = Socks5Server(allow_no_auth=True)
    for event in machine.receive_data(data):
        ...  # Authenticate -> machine.accept_credentials(ok)
             # ConnectRequest -> later machine.reply(Reply.SUCCEEDED or an error)
             # Failed -> send what is left and close
    transport.write(machine.data_to_send())
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

__all__ = [
    "Authenticate",
    "ConnectRequest",
    "Failed",
    "Reply",
    "Socks5Server",
    "State",
]

VERSION = 5
AUTH_VERSION = 1  # RFC 1929's sub-negotiation
NO_AUTH = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHOD = 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

#: Most bytes we hold from a client while its handshake is incomplete or
#: its reply pending (a whole handshake is at most 1,036 bytes; the rest is
#: early data for the target).
MAX_BUFFER = 256 * 1024

_HTTP_BODY = b"this is a SOCKS5 proxy, not an HTTP proxy\n"
_HTTP_REFUSAL = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_HTTP_BODY), _HTTP_BODY))
_SOCKS4_REFUSAL = b"\x00\x5b\x00\x00\x00\x00\x00\x00"  # request rejected or failed


class Reply(enum.IntEnum):
    """RFC 1928's reply codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the method selection message
    AUTH = "auth"  # waiting for the username/password request
    AUTH_PENDING = "auth pending"  # the application is checking the credentials
    REQUEST = "request"  # waiting for the request
    REPLY_PENDING = "reply pending"  # the application is dialing
    OPEN = "open"  # succeeded: every further byte is the application's
    CLOSED = "closed"  # failed: send what is left, then close


@attrs.frozen
class Authenticate:
    """The client's user name and password (RFC 1929); answer with L{Socks5Server.accept_credentials}."""

    user: bytes
    password: bytes


@attrs.frozen
class ConnectRequest:
    """CONNECT to C{host:port} (a host name, or an IP address as text); answer with L{Socks5Server.reply}."""

    host: str
    port: int


@attrs.frozen
class Failed:
    """The handshake failed (any reply is queued): send it, then close.  C{text} is for the log."""

    text: str


Event = Authenticate | ConnectRequest | Failed


class Socks5Server:
    """
    One SOCKS5 handshake, server side (see module docstring).

    @param allow_no_auth: accept clients that offer no authentication (the
        client is then named by its target host); else only
        username/password.
    """

    def __init__(self, allow_no_auth: bool = True) -> None:
        self.allow_no_auth = allow_no_auth
        self.state = State.GREETING
        #: The method chosen (NO_AUTH or USERNAME_PASSWORD), once chosen.
        self.method: int | None = None
        self._in = bytearray()
        self._out = bytearray()

    @property
    def closed(self) -> bool:
        """The handshake failed."""
        return self.state is State.CLOSED

    # Bytes.

    def receive_data(self, data: bytes) -> list[Event]:
        """Take bytes from the client; the events they complete, in order."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.OPEN:
            raise RuntimeError("the handshake is over: the data is the application's")
        self._in += data
        events: list[Event] = []
        while self.state in (State.GREETING, State.AUTH, State.REQUEST):
            before = self.state
            event = self._step()
            if event is not None:
                events.append(event)
            elif self.state is before:
                break  # more bytes needed
        if len(self._in) > MAX_BUFFER and not self.closed:
            events.append(self._fail(f"over {MAX_BUFFER} bytes sent before the handshake finished",
                                     Reply.GENERAL_FAILURE))
        return events

    def data_to_send(self) -> bytes:
        """The bytes to send the client now."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def trailing_data(self) -> bytes:
        """Once L{State.OPEN}: what the client sent past its request (early data for the target)."""
        data, self._in = bytes(self._in), bytearray()
        return data

    # Decisions.

    def accept_credentials(self, ok: bool) -> list[Event]:
        """
        Answer L{Authenticate}: go on to the request (the events of what
        the client already sent past its credentials), or fail (the failure
        status is queued).
        """
        if self.state is not State.AUTH_PENDING:
            raise RuntimeError(f"no credentials to accept in state {self.state.value}")
        self._out += bytes([AUTH_VERSION, 0 if ok else 1])
        if not ok:
            self.state = State.CLOSED
            self._in.clear()
            return [Failed("authentication failed")]
        self.state = State.REQUEST
        return self.receive_data(b"")

    def reply(self, code: Reply) -> None:
        """Answer L{ConnectRequest} (the bound address is not ours to tell: 0.0.0.0:0)."""
        if self.state is not State.REPLY_PENDING:
            raise RuntimeError(f"no request to reply to in state {self.state.value}")
        self._out += self._reply_bytes(code)
        self.state = State.OPEN if code is Reply.SUCCEEDED else State.CLOSED

    # Parsing.

    @staticmethod
    def _reply_bytes(code: Reply) -> bytes:
        return bytes([VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])

    def _fail(self, text: str, reply: Reply | None = None, raw: bytes = b"") -> Failed:
        if reply is not None:
            self._out += self._reply_bytes(reply)
        self._out += raw
        self.state = State.CLOSED
        self._in.clear()
        return Failed(text)

    def _step(self) -> Event | None:
        if self.state is State.GREETING:
            return self._greeting()
        if self.state is State.AUTH:
            return self._auth()
        return self._request()

    def _greeting(self) -> Event | None:
        buf = self._in
        if not buf:
            return None
        if buf[0] != VERSION:
            if buf[0] == 4:
                return self._fail("a SOCKS4 request (this proxy speaks SOCKS5)", raw=_SOCKS4_REFUSAL)
            if chr(buf[0]).isalpha():
                return self._fail("an HTTP request (this proxy speaks SOCKS5)", raw=_HTTP_REFUSAL)
            return self._fail(f"not SOCKS5 (first byte 0x{buf[0]:02x})")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        count = buf[1]
        methods = set(buf[2:2 + count])
        del buf[:2 + count]
        if USERNAME_PASSWORD in methods:
            self.method = USERNAME_PASSWORD
            self.state = State.AUTH
        elif NO_AUTH in methods and self.allow_no_auth:
            self.method = NO_AUTH
            self.state = State.REQUEST
        else:
            wanted = "username/password" if not self.allow_no_auth else "username/password or none"
            return self._fail(f"no acceptable authentication method (this proxy takes {wanted})",
                              raw=bytes([VERSION, NO_ACCEPTABLE_METHOD]))
        self._out += bytes([VERSION, self.method])
        return None

    def _auth(self) -> Event | None:
        buf = self._in
        if not buf:
            return None
        if buf[0] != AUTH_VERSION:
            return self._fail(f"bad username/password version 0x{buf[0]:02x}",
                              raw=bytes([AUTH_VERSION, 1]))
        if len(buf) < 2:
            return None
        user_end = 2 + buf[1]
        if len(buf) < user_end + 1:
            return None
        end = user_end + 1 + buf[user_end]
        if len(buf) < end:
            return None
        user, password = bytes(buf[2:user_end]), bytes(buf[user_end + 1:end])
        del buf[:end]
        self.state = State.AUTH_PENDING
        return Authenticate(user, password)

    def _request(self) -> Event | None:
        buf = self._in
        if buf and buf[0] != VERSION:
            return self._fail(f"bad request version 0x{buf[0]:02x}", Reply.GENERAL_FAILURE)
        if len(buf) >= 2 and buf[1] != CONNECT:  # (said at once: no need to wait for the address)
            return self._fail(f"command 0x{buf[1]:02x} not supported (CONNECT only)",
                              Reply.COMMAND_NOT_SUPPORTED)
        if len(buf) < 4:
            return None
        atyp = buf[3]
        if atyp == ATYP_IPV4:
            end = 4 + 4 + 2
        elif atyp == ATYP_IPV6:
            end = 4 + 16 + 2
        elif atyp == ATYP_DOMAIN:
            if len(buf) < 5:
                return None
            end = 5 + buf[4] + 2
        else:
            return self._fail(f"address type 0x{atyp:02x} not supported", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        if len(buf) < end:
            return None
        (port,) = struct.unpack("!H", buf[end - 2:end])
        raw = bytes(buf[4:end - 2])
        del buf[:end]
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(raw))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(raw))
        else:
            try:
                host = raw[1:].decode("ascii")
            except UnicodeDecodeError:
                return self._fail("the host name is not ASCII", Reply.HOST_UNREACHABLE)
            if not host or not host.isprintable():
                return self._fail("the host name is empty or not printable", Reply.HOST_UNREACHABLE)
        if port == 0:
            return self._fail("port 0", Reply.HOST_UNREACHABLE)
        self.state = State.REPLY_PENDING
        return ConnectRequest(host, port)
