"""
The sans-IO core of the remotedialer wire protocol (docs/protocol.md),
in the manner of h2: bytes in, events out; commands in, bytes out.  No
sockets, no reactor, no Twisted: the standard library and attrs only, so
another event loop could drive it (a test proves importing it loads no
Twisted, zope or Autobahn module).

Module map, from the wire up:
    _codec        messages and Go's varints
    _exceptions   every exception that needs no Twisted base class
    _events       what the multiplexer tells its adapter
    _handle       one stream as the multiplexer keeps it
    _lifecycle    the stream state table
    _flow         receive-side flow accounting: when to Pause, Resume, cut off
    _limits       what one session, or one unauthenticated request, may cost
    _multiplexer  one session's streams: bytes in -> events out, commands -> messages
    _addresses    Go's host:port splitting; the one "is this host loopback" rule
    _clientkey    what a client key may be: the one rule
    _text         peer-supplied text made safe for logs and error messages
"""

from remotedialer.protocol._clientkey import MAX_CLIENT_KEY, client_key_problem
from remotedialer.protocol._codec import Message, MessageIds, MessageType, decode, encode
from remotedialer.protocol._events import (
    ClientAnnounced,
    ConnectRequested,
    DataReceived,
    Event,
    ProtocolViolation,
    SendBlocked,
    StreamEnded,
)
from remotedialer.protocol._exceptions import (
    AuthorizationError,
    DialRefused,
    InvalidTransition,
    MalformedMessage,
    SessionClosed,
    TooManyAttempts,
    TooManyDials,
    TooManyStreams,
)
from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._handle import StreamHandle
from remotedialer.protocol._lifecycle import StreamInput, StreamState, Wire, transition
from remotedialer.protocol._limits import SessionLimits, UpgradeLimits
from remotedialer.protocol._multiplexer import (
    CLIENT_FIRST_CONN_ID,
    EOF,
    MAX_DATA_CHUNK,
    SERVER_FIRST_CONN_ID,
    Multiplexer,
)

__all__ = [
    "MessageType",
    "Message",
    "MessageIds",
    "decode",
    "encode",
    "AuthorizationError",
    "DialRefused",
    "InvalidTransition",
    "MalformedMessage",
    "SessionClosed",
    "TooManyAttempts",
    "TooManyDials",
    "TooManyStreams",
    "ClientAnnounced",
    "ConnectRequested",
    "DataReceived",
    "Event",
    "ProtocolViolation",
    "SendBlocked",
    "StreamEnded",
    "StreamHandle",
    "StreamInput",
    "StreamState",
    "Wire",
    "transition",
    "FlowLimits",
    "SessionLimits",
    "UpgradeLimits",
    "CLIENT_FIRST_CONN_ID",
    "EOF",
    "MAX_DATA_CHUNK",
    "SERVER_FIRST_CONN_ID",
    "Multiplexer",
    "MAX_CLIENT_KEY",
    "client_key_problem",
]
