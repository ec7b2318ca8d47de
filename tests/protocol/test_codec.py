"""
Tests for remotedialer.protocol._codec: the Go-compatible wire format (PROTOCOL.md section 3).
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import (
    LEGACY_DEADLINE,
    MAX_CLIENT_PAYLOAD,
    MAX_CONNECT_PAYLOAD,
    MAX_ERROR_PAYLOAD,
    Message,
    MessageIds,
    MessageType,
    data_header,
    decode,
    decode_data,
    decode_varint,
    encode,
    encode_data,
    encode_data_after,
    encode_varint,
)
from remotedialer.protocol._exceptions import MalformedMessage

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)

# (message, hex) straight from the PROTOCOL.md golden vector table.
GOLDEN = [
    (
        Message(1, 2, MessageType.CONNECT, b"tcp/127.0.0.1:8125"),
        "020404b0ea017463702f3132372e302e302e313a38313235",
    ),
    (Message(7, 2, MessageType.DATA, b"hello"), "0e0402b0ea0168656c6c6f"),
    (Message(8, 2, MessageType.ERROR, b"EOF"), "100406454f46"),
    (Message(9, 0, MessageType.ADD_CLIENT, b"foo/42"), "120008666f6f2f3432"),
    (Message(10, 2, MessageType.PAUSE), "14040c"),
    (Message(11, 2, MessageType.RESUME), "16040e"),
    (
        Message(12, 0, MessageType.SYNC_CONNECTIONS, struct.pack("<2q", 2, 3)),
        "18001002000000000000000300000000000000",
    ),
]

GOLDEN_VARINTS = [
    (-1, "01"),
    (2**62, "80808080808080808001"),
    (-(2**63), "ffffffffffffffffff01"),
]

# Text without '/' for client keys and Go-style protos.
no_slash_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"),
    min_size=1,
    max_size=20,
)
ascii_no_slash = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=127, blacklist_characters="/"),
    min_size=1,
    max_size=20,
)
ascii_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=200
)


class VarintTests(SynchronousTestCase):
    def test_golden(self) -> None:
        for value, hexed in GOLDEN_VARINTS:
            self.assertEqual(encode_varint(value).hex(), hexed)
            self.assertEqual(decode_varint(bytes.fromhex(hexed)), (value, len(hexed) // 2))

    def test_deadline(self) -> None:
        """The legacy deadline is written as Go writes 15000."""
        self.assertEqual(encode_varint(LEGACY_DEADLINE).hex(), "b0ea01")

    @given(int64s)
    def test_round_trip(self, value: int) -> None:
        encoded = encode_varint(value)
        self.assertTrue(1 <= len(encoded) <= 10)
        self.assertEqual(decode_varint(encoded), (value, len(encoded)))

    @given(int64s, st.binary(max_size=5), st.binary(max_size=5))
    def test_offset(self, value: int, before: bytes, after: bytes) -> None:
        encoded = encode_varint(value)
        self.assertEqual(
            decode_varint(before + encoded + after, len(before)),
            (value, len(before) + len(encoded)),
        )

    def test_out_of_range(self) -> None:
        self.assertRaises(ValueError, encode_varint, 2**63)
        self.assertRaises(ValueError, encode_varint, -(2**63) - 1)

    def test_empty(self) -> None:
        self.assertRaises(MalformedMessage, decode_varint, b"")
        self.assertRaises(MalformedMessage, decode_varint, b"\x01", 1)

    def test_truncated(self) -> None:
        for hexed in ("80", "ffff", "808080808080808080"):
            self.assertRaises(MalformedMessage, decode_varint, bytes.fromhex(hexed))

    def test_eleven_bytes(self) -> None:
        self.assertRaises(MalformedMessage, decode_varint, b"\x80" * 10 + b"\x00")

    def test_overflow(self) -> None:
        """A 10th byte above 1 does not fit in 64 bits."""
        self.assertRaises(MalformedMessage, decode_varint, b"\xff" * 9 + b"\x02")
        self.assertEqual(decode_varint(b"\xff" * 9 + b"\x01"), (INT64_MIN, 10))

    def test_non_minimal(self) -> None:
        """Go accepts padded encodings, so we do too."""
        self.assertEqual(decode_varint(b"\x82\x00"), (1, 2))

    @given(st.binary(max_size=12))
    def test_arbitrary(self, raw: bytes) -> None:
        try:
            value, offset = decode_varint(raw)
        except MalformedMessage:
            return
        self.assertTrue(INT64_MIN <= value <= INT64_MAX)
        self.assertTrue(1 <= offset <= 10)


class GoldenMessageTests(SynchronousTestCase):
    def test_encode(self) -> None:
        for message, hexed in GOLDEN:
            self.assertEqual(encode(message).hex(), hexed, message)

    def test_decode(self) -> None:
        for message, hexed in GOLDEN:
            self.assertEqual(decode(bytes.fromhex(hexed)), message)

    def test_constructors(self) -> None:
        built = [
            _codec.connect(1, 2, "tcp", "127.0.0.1:8125"),
            _codec.data(7, 2, b"hello"),
            _codec.error(8, 2, "EOF"),
            _codec.add_client(9, "foo", 42),
            _codec.pause(10, 2),
            _codec.resume(11, 2),
            _codec.sync_connections(12, [2, 3]),
        ]
        self.assertEqual([encode(m).hex() for m in built], [hexed for _, hexed in GOLDEN])

    def test_encode_data(self) -> None:
        self.assertEqual(encode_data(7, 2, b"hello").hex(), "0e0402b0ea0168656c6c6f")

    def test_views(self) -> None:
        messages = [decode(bytes.fromhex(hexed)) for _, hexed in GOLDEN]
        self.assertEqual(messages[0].connect_target(), ("tcp", "127.0.0.1:8125"))
        self.assertEqual(messages[2].error_text(), "EOF")
        self.assertEqual(messages[3].client_session(), ("foo", 42))
        self.assertEqual(messages[6].conn_ids(), [2, 3])

    def test_types(self) -> None:
        self.assertEqual(
            [(t.name, int(t)) for t in MessageType],
            [
                ("DATA", 1),
                ("CONNECT", 2),
                ("ERROR", 3),
                ("ADD_CLIENT", 4),
                ("REMOVE_CLIENT", 5),
                ("PAUSE", 6),
                ("RESUME", 7),
                ("SYNC_CONNECTIONS", 8),
            ],
        )


class RoundTripTests(SynchronousTestCase):
    def assertRoundTrip(self, message: Message) -> Message:
        decoded = decode(encode(message))
        self.assertEqual(decoded, message)
        self.assertIs(type(decoded.type), MessageType)
        return decoded

    @given(int64s, int64s, st.binary(max_size=2000))
    def test_data(self, id: int, conn_id: int, payload: bytes) -> None:
        message = _codec.data(id, conn_id, payload)
        self.assertEqual(encode_data(id, conn_id, payload), encode(message))
        self.assertEqual(self.assertRoundTrip(message).payload, payload)

    @given(int64s, int64s, st.binary(max_size=2000))
    def test_encode_data_after(self, id: int, conn_id: int, payload: bytes) -> None:
        """A stream's header made once, and the id's varint, give encode_data's bytes."""
        self.assertEqual(
            encode_data_after(encode_varint(id), data_header(conn_id), payload),
            encode_data(id, conn_id, payload),
        )
        self.assertEqual(
            encode_data_after(encode_varint(id), data_header(conn_id), memoryview(payload)),
            encode_data(id, conn_id, payload),
        )

    @given(int64s, int64s, st.binary(max_size=100))
    def test_encode_data_bytes_like(self, id: int, conn_id: int, payload: bytes) -> None:
        self.assertEqual(
            encode_data(id, conn_id, memoryview(payload)), encode_data(id, conn_id, payload)
        )

    @given(int64s, int64s, ascii_no_slash, ascii_text)
    def test_connect(self, id: int, conn_id: int, proto: str, address: str) -> None:
        message = _codec.connect(id, conn_id, proto, address[: MAX_CONNECT_PAYLOAD - 21])
        decoded = self.assertRoundTrip(message)
        self.assertEqual(decoded.connect_target(), (proto, address[: MAX_CONNECT_PAYLOAD - 21]))

    @given(int64s, int64s, ascii_no_slash, ascii_no_slash, ascii_text)
    def test_connect_peered(
        self, id: int, conn_id: int, client: str, proto: str, address: str
    ) -> None:
        """Peering puts 'clientKey::' in front of the proto."""
        peered = f"{client}::{proto}"
        decoded = self.assertRoundTrip(_codec.connect(id, conn_id, peered, address[:200]))
        self.assertEqual(decoded.connect_target(), (peered, address[:200]))

    @given(int64s, int64s, st.text(max_size=30))
    def test_error(self, id: int, conn_id: int, text: str) -> None:
        text = text.encode("utf-8", "replace").decode("utf-8")
        decoded = self.assertRoundTrip(_codec.error(id, conn_id, text))
        self.assertEqual(decoded.error_text(), text)

    @given(int64s, int64s, st.text(min_size=50, max_size=200))
    def test_error_long_text(self, id: int, conn_id: int, text: str) -> None:
        """Long text is cut where receivers cut it, without breaking a character."""
        message = _codec.error(id, conn_id, text)
        self.assertTrue(len(message.payload) <= MAX_ERROR_PAYLOAD)
        got = self.assertRoundTrip(message).error_text()
        self.assertTrue(text.encode("utf-8", "replace").startswith(got.encode("utf-8")))

    @given(int64s, no_slash_text, int64s, st.sampled_from([_codec.add_client, _codec.remove_client]))
    def test_client(self, id: int, key: str, session: int, build) -> None:
        decoded = self.assertRoundTrip(build(id, key, session))
        self.assertEqual(decoded.conn_id, 0)
        self.assertEqual(decoded.client_session(), (key, session))

    @given(int64s, int64s, st.sampled_from([_codec.pause, _codec.resume]))
    def test_pause_resume(self, id: int, conn_id: int, build) -> None:
        self.assertEqual(self.assertRoundTrip(build(id, conn_id)).payload, b"")

    @given(int64s, st.lists(int64s, max_size=50))
    def test_sync_connections(self, id: int, conn_ids: list[int]) -> None:
        decoded = self.assertRoundTrip(_codec.sync_connections(id, iter(conn_ids)))
        self.assertEqual(decoded.conn_ids(), conn_ids)

    def test_decode_bytes_like(self) -> None:
        raw = bytes.fromhex(GOLDEN[1][1])
        self.assertEqual(decode(bytearray(raw)), GOLDEN[1][0])
        self.assertEqual(decode(memoryview(raw)), GOLDEN[1][0])

    def test_other_deadline(self) -> None:
        """Receivers ignore the deadline value, whatever it is."""
        raw = b"\x0e\x04\x02" + encode_varint(-123456789) + b"hi"
        self.assertEqual(decode(raw), Message(7, 2, MessageType.DATA, b"hi"))


class DecodeDataTests(SynchronousTestCase):
    """decode_data, the hot path's reader of DATA, agrees with decode on every input."""

    @given(int64s, int64s, st.binary(max_size=300))
    def test_data(self, id: int, conn_id: int, payload: bytes) -> None:
        """Every DATA message we (or Go) encode is read, with its stream id and payload."""
        self.assertEqual(decode_data(encode_data(id, conn_id, payload)), (conn_id, payload))

    @given(st.binary(max_size=40))
    def test_agrees_with_decode(self, data: bytes) -> None:
        """On any bytes, a result is exactly decode's; None leaves decode to judge them."""
        fast = decode_data(data)
        if fast is None:
            return
        message = decode(data)
        self.assertIs(message.type, MessageType.DATA)
        self.assertEqual(fast, (message.conn_id, message.payload))

    @given(st.sampled_from([m for m, _ in GOLDEN if m.type is not MessageType.DATA]))
    def test_other_types(self, message: Message) -> None:
        """Anything but DATA goes to decode."""
        self.assertIsNone(decode_data(encode(message)))

    def test_golden(self) -> None:
        """The golden DATA vector, and its deadline in another encoding."""
        self.assertEqual(decode_data(bytes.fromhex("0e0402b0ea0168656c6c6f")), (2, b"hello"))
        self.assertEqual(decode_data(bytes.fromhex("0e040200" + "68656c6c6f")), (2, b"hello"))

    @given(st.binary(min_size=1, max_size=12).map(lambda b: bytes(x | 0x80 for x in b[:-1]) + b[-1:]),
           st.binary(max_size=30))
    def test_long_ids(self, id_bytes: bytes, rest: bytes) -> None:
        """Ids of any length, valid or not (over 10 bytes, over 64 bits), as decode reads them."""
        data = id_bytes + b"\x04\x02" + _codec.encode_varint(15000) + rest
        fast = decode_data(data)
        try:
            message = decode(data)
        except MalformedMessage:
            self.assertIsNone(fast)
        else:
            self.assertEqual(fast, (message.conn_id, message.payload))

    def test_malformed(self) -> None:
        """Truncated headers and bad varints are None: decode raises for them."""
        for hexed in ("", "0e", "0e04", "0e0402", "0e0402b0", "ffffffffffffffffffff01040200",
                      "ffffffffffffffffff02040200", "ffffffffffffffffffffff00040200",
                      "0e0482", "0e04028080"):
            data = bytes.fromhex(hexed)
            self.assertIsNone(decode_data(data), hexed)
            self.assertRaises(MalformedMessage, decode, data)


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, raw: bytes, *words: str) -> None:
        e = self.assertRaises(MalformedMessage, decode, raw)
        for word in words:
            self.assertIn(word, str(e))

    def test_empty(self) -> None:
        self.assertMalformed(b"", "empty")

    def test_truncated_header(self) -> None:
        """Every proper prefix of each golden header is rejected."""
        for message, hexed in GOLDEN:
            raw = bytes.fromhex(hexed)
            header_length = len(raw) - len(message.payload)
            for end in range(header_length):
                self.assertRaises(MalformedMessage, decode, raw[:end])

    def test_truncated_header_big_ids(self) -> None:
        raw = encode(_codec.data(INT64_MIN, INT64_MAX, b""))
        for end in range(len(raw)):
            self.assertRaises(MalformedMessage, decode, raw[:end])
        self.assertEqual(decode(raw), _codec.data(INT64_MIN, INT64_MAX, b""))

    def test_eleven_byte_varint(self) -> None:
        self.assertMalformed(b"\x80" * 10 + b"\x00\x04\x0c", "id", "10 bytes")
        self.assertMalformed(b"\x02" + b"\x80" * 10 + b"\x00\x0c", "connID")

    def test_overflow(self) -> None:
        self.assertMalformed(b"\x02\x04" + b"\xff" * 9 + b"\x02", "type", "overflow")

    def test_unknown_type(self) -> None:
        for value in (0, 9, -1):
            self.assertMalformed(b"\x02\x04" + encode_varint(value), "unknown message type")

    def test_missing_deadline(self) -> None:
        self.assertMalformed(bytes.fromhex("0e0402"), "deadline")
        self.assertMalformed(bytes.fromhex("020404"), "deadline")
        self.assertMalformed(bytes.fromhex("0e0402b0ea"), "deadline")

    def connect_raw(self, payload: bytes) -> bytes:
        return bytes.fromhex("020404b0ea01") + payload

    def test_connect_without_slash(self) -> None:
        self.assertMalformed(self.connect_raw(b"tcp127.0.0.1:80"), "/")

    def test_connect_empty_parts(self) -> None:
        self.assertMalformed(self.connect_raw(b"/127.0.0.1:80"), "proto")
        self.assertMalformed(self.connect_raw(b"tcp/"), "address")
        self.assertMalformed(self.connect_raw(b""))

    def test_connect_not_ascii(self) -> None:
        self.assertMalformed(self.connect_raw("tcp/h\u00e9:80".encode()), "ASCII")

    def test_connect_too_long(self) -> None:
        payload = b"tcp/" + b"a" * (MAX_CONNECT_PAYLOAD - 4)
        self.assertEqual(decode(self.connect_raw(payload)).payload, payload)
        self.assertMalformed(self.connect_raw(payload + b"a"), "267")

    def test_client_too_long(self) -> None:
        for prefix in ("120008", "12000a"):
            payload = b"k" * (MAX_CLIENT_PAYLOAD - 2) + b"/1"
            self.assertEqual(decode(bytes.fromhex(prefix) + payload).payload, payload)
            self.assertMalformed(bytes.fromhex(prefix) + b"k" + payload, "101")

    def test_client_bad_payload(self) -> None:
        for prefix in ("120008", "12000a"):
            for payload in (b"foo42", b"foo/x", b"foo/", b"/42", b"foo/4 2", b"foo/1_0",
                            b"foo/ 42", b"foo/\xd9\xa1", b"\xff/1", b"foo/9223372036854775808"):
                self.assertMalformed(bytes.fromhex(prefix) + payload)

    def test_client_liberal(self) -> None:
        """Signs and int64 extremes are decimal integers too; the last '/' splits."""
        for payload, expected in (
            (b"foo/-42", ("foo", -42)),
            (b"foo/+42", ("foo", 42)),
            (b"a/b/7", ("a/b", 7)),
            (b"foo/-9223372036854775808", ("foo", INT64_MIN)),
        ):
            self.assertEqual(decode(bytes.fromhex("120008") + payload).client_session(), expected)

    def test_sync_not_multiple_of_8(self) -> None:
        for size in (1, 7, 9, 15):
            self.assertMalformed(bytes.fromhex("180010") + b"\x00" * size, "multiple of 8")
        self.assertEqual(decode(bytes.fromhex("180010")).conn_ids(), [])

    def test_sync_negative_ids(self) -> None:
        raw = bytes.fromhex("180010") + b"\xff" * 8
        self.assertEqual(decode(raw).conn_ids(), [-1])

    def test_error_truncated(self) -> None:
        """Go reads at most 100 bytes of Error text; so do we, without raising."""
        text = b"x" * 99 + b"yz"
        message = decode(bytes.fromhex("100406") + text)
        self.assertEqual(message.payload, text[:MAX_ERROR_PAYLOAD])
        self.assertEqual(message.error_text(), "x" * 99 + "y")

    def test_error_invalid_utf8(self) -> None:
        message = decode(bytes.fromhex("100406") + b"bad \xff")
        self.assertEqual(message.error_text(), "bad \ufffd")

    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, raw: bytes) -> None:
        try:
            message = decode(raw)
        except MalformedMessage:
            return
        self.assertIsInstance(message, Message)

    @given(
        int64s,
        int64s,
        st.integers(min_value=-2, max_value=10),
        st.binary(max_size=300),
    )
    def test_arbitrary_payloads(self, id: int, conn_id: int, type_: int, payload: bytes) -> None:
        """Valid headers with any payload: decode succeeds or raises MalformedMessage."""
        raw = encode_varint(id) + encode_varint(conn_id) + encode_varint(type_) + payload
        try:
            message = decode(raw)
        except MalformedMessage:
            return
        self.assertIsInstance(message, Message)
        self.assertEqual((message.id, message.conn_id, int(message.type)), (id, conn_id, type_))


class ConstructorErrorTests(SynchronousTestCase):
    def test_connect(self) -> None:
        for proto, address in (("", "a:1"), ("tcp", ""), ("t/cp", "a:1"), ("tcp", "h\u00e9:1")):
            self.assertRaises(ValueError, _codec.connect, 1, 2, proto, address)
        self.assertRaises(ValueError, _codec.connect, 1, 2, "tcp", "a" * MAX_CONNECT_PAYLOAD)

    def test_client(self) -> None:
        for build in (_codec.add_client, _codec.remove_client):
            self.assertRaises(ValueError, build, 1, "", 1)
            self.assertRaises(ValueError, build, 1, "a/b", 1)
            self.assertRaises(ValueError, build, 1, "a", 2**63)
            self.assertRaises(ValueError, build, 1, "k" * MAX_CLIENT_PAYLOAD, 1)

    def test_sync_connections(self) -> None:
        self.assertRaises(ValueError, _codec.sync_connections, 1, [2**63])

    def test_encode_out_of_range(self) -> None:
        self.assertRaises(ValueError, encode, _codec.pause(2**63, 1))
        self.assertRaises(ValueError, encode_data, 1, -(2**63) - 1, b"")

    def test_encode_unknown_type(self) -> None:
        self.assertRaises(ValueError, encode, Message(1, 2, 9, b""))  # type: ignore[arg-type]


class MessageIdsTests(SynchronousTestCase):
    def test_counts_up(self) -> None:
        ids = MessageIds(5)
        self.assertEqual([ids.next() for _ in range(3)], [5, 6, 7])

    def test_wraps(self) -> None:
        ids = MessageIds(INT64_MAX - 1)
        self.assertEqual([ids.next() for _ in range(3)], [INT64_MAX - 1, INT64_MAX, INT64_MIN])

    def test_random_start(self) -> None:
        starts = {MessageIds().next() for _ in range(20)}
        self.assertTrue(all(0 <= s < 2**31 for s in starts))
        self.assertTrue(len(starts) > 1)

    def test_bad_start(self) -> None:
        self.assertRaises(ValueError, MessageIds, 2**63)

    @given(int64s, st.integers(min_value=1, max_value=300))
    def test_next_varint(self, start: int, count: int) -> None:
        """next_varint is encode_varint(next()), across 64-id runs, the int64 wrap and negatives."""
        ids, plain = MessageIds(start), MessageIds(start)
        for _ in range(count):
            self.assertEqual(ids.next_varint(), encode_varint(plain.next()))

    def test_next_varint_edges(self) -> None:
        """Where the shared rest of the varint changes, and the small negatives past the wrap."""
        for start in (8190, 2**31 - 70, 2**35 - 3, INT64_MAX - 2, -130, -3):
            ids, plain = MessageIds(start), MessageIds(start)
            for _ in range(140):
                self.assertEqual(ids.next_varint(), encode_varint(plain.next()))
