"""
Encoding and decoding of remotedialer messages.

Every remotedialer message is one binary WebSocket message, laid out exactly as
Go's rancher/remotedialer lays it out, so that Python and Go ends can talk to each
other (see docs/protocol.md, section 3)::

    id        varint   message id (receivers ignore it)
    connID    varint   stream id, 0 for session-level messages
    type      varint   a MessageType
    deadline  varint   only for DATA and CONNECT: legacy, written as 15000, ignored
    payload   bytes    the rest of the message

A varint is Go's ``binary.PutVarint``: the int64 is zig-zag mapped to a uint64,
which is written as unsigned LEB128 (1 to 10 bytes).  Decoding rejects what Go's
``binary.ReadVarint`` rejects: truncation, more than 10 bytes, and a 10th byte
above 1.

This module is pure (no I/O).  DATA is the hot path, so its header pieces are
precomputed and :func:`encode_data` builds the bytes without a :class:`Message`;
:func:`decode_data` reads a well-formed DATA message without one either (and
leaves everything else, malformed input included, to :func:`decode`).
"""

from __future__ import annotations

import enum
import re
import secrets
import struct
from collections.abc import Iterable, Iterator

import attrs

from remotedialer.protocol._exceptions import MalformedMessage
from remotedialer.protocol._text import cut

__all__ = [
    "LEGACY_DEADLINE",
    "MAX_CLIENT_PAYLOAD",
    "MAX_CONNECT_PAYLOAD",
    "MAX_ERROR_PAYLOAD",
    "Message",
    "MessageIds",
    "MessageType",
    "add_client",
    "connect",
    "data",
    "decode",
    "decode_data",
    "decode_varint",
    "encode",
    "data_header",
    "encode_data",
    "encode_data_after",
    "encode_varint",
    "error",
    "pause",
    "remove_client",
    "resume",
    "sync_connections",
]


class MessageType(enum.IntEnum):
    """The message types of the wire protocol, with Go's numbers."""

    DATA = 1
    CONNECT = 2
    ERROR = 3
    ADD_CLIENT = 4
    REMOVE_CLIENT = 5
    PAUSE = 6
    RESUME = 7
    SYNC_CONNECTIONS = 8


LEGACY_DEADLINE = 15000
MAX_CONNECT_PAYLOAD = 266  # Go reads at most this
MAX_ERROR_PAYLOAD = 100  # Go reads at most this
MAX_CLIENT_PAYLOAD = 100  # Go reads at most this

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_VARINT_LEN = 10


def _encode_varint_uncached(n: int) -> bytes:
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise ValueError(f"{n} is outside the int64 range")
    return _encode_unsigned((n << 1) ^ (n >> 63))


def _encode_unsigned(u: int) -> bytes:
    """Unsigned LEB128 (what follows the zig-zag mapping in a varint)."""
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


# Every non-negative value that fits in 1 or 2 bytes: covers types and the
# stream ids of a session (Go counts them up from 2).
_VARINT_CACHE = tuple(_encode_varint_uncached(n) for n in range(8192))
_VARINT_CACHE_LEN = len(_VARINT_CACHE)
# The first byte of a varint of 2 bytes or more, by its low 7 bits.
_LOW_7_BITS_MORE = tuple(bytes((b | 0x80,)) for b in range(0x80))
# Decoded value of each 1-byte varint.
_ONE_BYTE_VALUES = tuple((b >> 1) ^ -(b & 1) for b in range(0x80))

_DEADLINE_BYTES = _encode_varint_uncached(LEGACY_DEADLINE)
# What follows connID in the header, per type.
_TYPE_SUFFIX = {
    t: _VARINT_CACHE[t] + (_DEADLINE_BYTES if t in (MessageType.DATA, MessageType.CONNECT) else b"")
    for t in MessageType
}
_DATA_SUFFIX = _TYPE_SUFFIX[MessageType.DATA]
_TYPES_BY_VALUE = {int(t): t for t in MessageType}

_DECIMAL = re.compile(r"[+-]?[0-9]+")


def encode_varint(n: int) -> bytes:
    """Encode ``n`` like Go's ``binary.PutVarint``; ValueError outside int64."""
    if 0 <= n < _VARINT_CACHE_LEN:
        return _VARINT_CACHE[n]
    return _encode_varint_uncached(n)


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """
    Decode the varint at ``offset`` like Go's ``binary.ReadVarint``.

    Returns ``(value, offset just after it)``.
    """
    try:
        b = data[offset]
    except IndexError:
        raise MalformedMessage(f"truncated varint at offset {offset}") from None
    if b < 0x80:
        return _ONE_BYTE_VALUES[b], offset + 1
    u = 0
    shift = 0
    end = min(len(data), offset + _MAX_VARINT_LEN)
    for i in range(offset, end):
        b = data[i]
        if b < 0x80:
            if i - offset == _MAX_VARINT_LEN - 1 and b > 1:
                raise MalformedMessage(f"varint at offset {offset} overflows 64 bits")
            u |= b << shift
            return (u >> 1) ^ -(u & 1), i + 1
        u |= (b & 0x7F) << shift
        shift += 7
    if end - offset == _MAX_VARINT_LEN:
        raise MalformedMessage(f"varint at offset {offset} is longer than 10 bytes")
    raise MalformedMessage(f"truncated varint at offset {offset}")


def _short_repr(payload: bytes) -> str:
    """Keep reprs of DATA messages readable in debug logs."""
    if len(payload) <= 32:
        return repr(payload)
    return f"{payload[:32]!r}...({len(payload)} bytes)"


@attrs.frozen(slots=True)
class Message:
    """One decoded message.  ``payload`` is raw; the methods interpret it."""

    id: int
    conn_id: int
    type: MessageType
    payload: bytes = attrs.field(default=b"", repr=_short_repr)

    def connect_target(self) -> tuple[str, str]:
        """The ``(proto, address)`` of a CONNECT payload ``proto/address``."""
        try:
            text = self.payload.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedMessage("Connect target is not ASCII") from None
        proto, slash, address = text.partition("/")
        if not slash:
            raise MalformedMessage(f"Connect target {cut(text)} has no '/'")
        if not proto:
            raise MalformedMessage(f"Connect target {cut(text)} has an empty proto")
        if not address:
            raise MalformedMessage(f"Connect target {cut(text)} has an empty address")
        return proto, address

    def error_text(self) -> str:
        """The text of an ERROR payload; undecodable bytes become U+FFFD."""
        return self.payload.decode("utf-8", errors="replace")

    def client_session(self) -> tuple[str, int]:
        """The ``(client_key, session_key)`` of an ADD_CLIENT/REMOVE_CLIENT payload."""
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("client/session payload is not UTF-8") from None
        client_key, slash, session = text.rpartition("/")
        if not slash:
            raise MalformedMessage(f"client/session payload {cut(text)} has no '/'")
        if not client_key:
            raise MalformedMessage(f"client/session payload {cut(text)} has an empty client key")
        if not _DECIMAL.fullmatch(session):
            raise MalformedMessage(f"session key {cut(session)} is not a decimal integer")
        session_key = int(session)
        if not _INT64_MIN <= session_key <= _INT64_MAX:
            raise MalformedMessage(f"session key {cut(session)} is outside the int64 range")
        return client_key, session_key

    def conn_ids(self) -> list[int]:
        """The stream ids of a SYNC_CONNECTIONS payload (int64 little-endian each)."""
        return list(self.iter_conn_ids())

    def iter_conn_ids(self) -> Iterator[int]:
        """The same ids one by one: a huge list costs the receiver no memory."""
        if len(self.payload) % 8:
            raise MalformedMessage(
                f"SyncConnections payload of {len(self.payload)} bytes is not a multiple of 8"
            )
        return (conn_id for (conn_id,) in struct.iter_unpack("<q", self.payload))


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``; ValueError if it cannot be encoded."""
    try:
        suffix = _TYPE_SUFFIX[message.type]
    except KeyError:
        raise ValueError(f"unknown message type {message.type!r}") from None
    return b"".join(
        (encode_varint(message.id), encode_varint(message.conn_id), suffix, message.payload)
    )


def encode_data(id: int, conn_id: int, payload: bytes) -> bytes:
    """Same bytes as ``encode(data(id, conn_id, payload))``, without the Message."""
    return b"".join((encode_varint(id), encode_varint(conn_id), _DATA_SUFFIX, payload))


def data_header(conn_id: int) -> bytes:
    """
    What follows the id in every DATA message of stream ``conn_id`` (its
    id, the type, the deadline): the same for all of them, so a sender
    makes it once per stream (see :func:`encode_data_after`).
    """
    return encode_varint(conn_id) + _DATA_SUFFIX


def encode_data_after(id_varint: bytes, header: bytes, payload: bytes | memoryview) -> bytes:
    """
    Same bytes as ``encode_data(id, conn_id, payload)``, given the id's
    varint (:meth:`MessageIds.next_varint`) and ``data_header(conn_id)``.
    """
    return b"".join((id_varint, header, payload))


_DATA_TYPE_BYTE = _VARINT_CACHE[MessageType.DATA][0]  # 0x02, the minimal varint of 1
_DEADLINE_LEN = len(_DEADLINE_BYTES)
#: Matches a varint of at most 10 bytes at the start (what it decodes to is not checked).
_SKIP_VARINT = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]").match


def decode_data(data: bytes) -> tuple[int, bytes] | None:
    """
    ``(conn_id, payload)`` of a well-formed DATA message, without building a
    :class:`Message`; None for anything else (another type, a non-minimal
    type varint, malformed bytes): :func:`decode` then says what it is.
    Whatever it returns, ``decode`` returns the same conn_id and payload.
    """
    try:
        if data[0] < 0x80:  # the message id: ignored, but it must be a valid varint
            offset = 1
        else:  # (a sender's ids count up from a random start: 5 bytes, typically)
            skipped = _SKIP_VARINT(data)
            if skipped is None:
                return None
            offset = skipped.end()
            if offset == _MAX_VARINT_LEN and data[offset - 1] > 1:
                return None  # over 64 bits
        b = data[offset]
        if b < 0x80:
            conn_id = _ONE_BYTE_VALUES[b]
            offset += 1
        else:
            conn_id, offset = decode_varint(data, offset)
        if data[offset] != _DATA_TYPE_BYTE:
            return None
        offset += 1
        if data.startswith(_DEADLINE_BYTES, offset):
            offset += _DEADLINE_LEN
        else:
            _, offset = decode_varint(data, offset)
    except (IndexError, MalformedMessage):
        return None
    return conn_id, data[offset:]


def _read_header_field(data: bytes, offset: int, name: str) -> tuple[int, int]:
    if offset >= len(data):
        raise MalformedMessage(f"truncated header: no {name} field")
    try:
        return decode_varint(data, offset)
    except MalformedMessage as e:
        raise MalformedMessage(f"bad {name} field: {e}") from None


def decode(data: bytes) -> Message:
    """
    Decode one message and check its payload has the form its type requires.

    Be liberal like Go: the ERROR text is cut to what Go reads, and payloads of
    PAUSE/RESUME are kept but carry no meaning.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if not data:
        raise MalformedMessage("empty message")
    id, offset = _read_header_field(data, 0, "id")
    conn_id, offset = _read_header_field(data, offset, "connID")
    try:
        return _decode_rest(data, offset, id, conn_id)
    except MalformedMessage as e:
        e.conn_id = conn_id
        raise


def _decode_rest(data: bytes, offset: int, id: int, conn_id: int) -> Message:
    raw_type, offset = _read_header_field(data, offset, "type")
    mtype = _TYPES_BY_VALUE.get(raw_type)
    if mtype is None:
        raise MalformedMessage(f"unknown message type {raw_type}")
    try:
        return _decode_payload(data, offset, id, conn_id, mtype)
    except MalformedMessage as e:
        e.message_type = mtype
        raise


def _decode_payload(data: bytes, offset: int, id: int, conn_id: int, mtype: MessageType) -> Message:
    if mtype is MessageType.DATA or mtype is MessageType.CONNECT:
        if data.startswith(_DEADLINE_BYTES, offset):
            offset += len(_DEADLINE_BYTES)
        else:
            _, offset = _read_header_field(data, offset, "deadline")
    if mtype is MessageType.ERROR:
        return Message(id, conn_id, mtype, data[offset : offset + MAX_ERROR_PAYLOAD])
    message = Message(id, conn_id, mtype, data[offset:])
    if mtype is MessageType.CONNECT:
        if len(message.payload) > MAX_CONNECT_PAYLOAD:
            raise MalformedMessage(
                f"Connect payload of {len(message.payload)} bytes is over {MAX_CONNECT_PAYLOAD}"
            )
        message.connect_target()
    elif mtype is MessageType.ADD_CLIENT or mtype is MessageType.REMOVE_CLIENT:
        if len(message.payload) > MAX_CLIENT_PAYLOAD:
            raise MalformedMessage(
                f"{mtype.name} payload of {len(message.payload)} bytes is over {MAX_CLIENT_PAYLOAD}"
            )
        message.client_session()
    elif mtype is MessageType.SYNC_CONNECTIONS:
        message.iter_conn_ids()  # checks the length; ids are read when used
    return message


def data(id: int, conn_id: int, payload: bytes) -> Message:
    """A DATA message carrying ``payload`` on stream ``conn_id``."""
    return Message(id, conn_id, MessageType.DATA, bytes(payload))


def connect(id: int, conn_id: int, proto: str, address: str) -> Message:
    """A CONNECT asking the far side to dial ``address`` with ``proto``."""
    if not proto or "/" in proto:
        raise ValueError(f"proto {proto!r} must be non-empty and without '/'")
    if not address:
        raise ValueError("address must be non-empty")
    payload = f"{proto}/{address}".encode("ascii")
    if len(payload) > MAX_CONNECT_PAYLOAD:
        raise ValueError(f"Connect target is over {MAX_CONNECT_PAYLOAD} bytes")
    return Message(id, conn_id, MessageType.CONNECT, payload)


def error(id: int, conn_id: int, text: str) -> Message:
    """
    An ERROR closing stream ``conn_id``; ``text`` "EOF" is a clean close.

    The text is cut to MAX_ERROR_PAYLOAD bytes at a character boundary, since
    receivers keep no more and would otherwise see a broken character.
    """
    payload = text.encode("utf-8", errors="replace")
    if len(payload) > MAX_ERROR_PAYLOAD:
        payload = payload[:MAX_ERROR_PAYLOAD].decode("utf-8", errors="ignore").encode("utf-8")
    return Message(id, conn_id, MessageType.ERROR, payload)


def _client_payload(client_key: str, session_key: int) -> bytes:
    if not client_key or "/" in client_key:
        raise ValueError(f"client key {client_key!r} must be non-empty and without '/'")
    if not _INT64_MIN <= session_key <= _INT64_MAX:
        raise ValueError(f"session key {session_key} is outside the int64 range")
    payload = f"{client_key}/{session_key}".encode()
    if len(payload) > MAX_CLIENT_PAYLOAD:
        raise ValueError(f"client/session payload is over {MAX_CLIENT_PAYLOAD} bytes")
    return payload


def add_client(id: int, client_key: str, session_key: int) -> Message:
    """Tell a peer that a session of ``client_key`` is reachable through us."""
    return Message(id, 0, MessageType.ADD_CLIENT, _client_payload(client_key, session_key))


def remove_client(id: int, client_key: str, session_key: int) -> Message:
    """Tell a peer that a session of ``client_key`` is gone."""
    return Message(id, 0, MessageType.REMOVE_CLIENT, _client_payload(client_key, session_key))


def pause(id: int, conn_id: int) -> Message:
    """Ask the far side to stop sending DATA on ``conn_id``."""
    return Message(id, conn_id, MessageType.PAUSE)


def resume(id: int, conn_id: int) -> Message:
    """Let the far side send DATA on ``conn_id`` again."""
    return Message(id, conn_id, MessageType.RESUME)


def sync_connections(id: int, conn_ids: Iterable[int]) -> Message:
    """List our live stream ids, so the far side can drop the others."""
    ids = list(conn_ids)
    try:
        payload = struct.pack(f"<{len(ids)}q", *ids)
    except struct.error as e:
        raise ValueError(f"bad stream id: {e}") from None
    return Message(id, 0, MessageType.SYNC_CONNECTIONS, payload)


class MessageIds:
    """Message ids: senders count up from a random start (receivers ignore them). Wraps within int64."""

    def __init__(self, start: int | None = None) -> None:
        if start is None:
            start = secrets.randbelow(2**31)
        elif not _INT64_MIN <= start <= _INT64_MAX:
            raise ValueError(f"start {start} is outside the int64 range")
        self._next = start
        #: The zig-zagged id without its low 7 bits, and its varint (next_varint's cache).
        self._rest = -1
        self._rest_varint = b""

    def next(self) -> int:
        """The next id to send."""
        current = self._next
        self._next = current + 1 if current != _INT64_MAX else _INT64_MIN
        return current

    def next_varint(self) -> bytes:
        """
        The next id to send, encoded (the same bytes as ``encode_varint(next())``).
        Consecutive ids share all but their first varint byte for 64 ids
        in a row, so that rest is encoded once per 64 ids, not per message.
        """
        n = self.next()
        if 0 <= n < _VARINT_CACHE_LEN:
            return _VARINT_CACHE[n]
        u = (n << 1) ^ (n >> 63)
        if u < 0x80:  # (a small negative id, past the wrap)
            return _encode_unsigned(u)
        rest = u >> 7
        if rest != self._rest:
            self._rest = rest
            self._rest_varint = _encode_unsigned(rest)
        return _LOW_7_BITS_MORE[u & 0x7F] + self._rest_varint
