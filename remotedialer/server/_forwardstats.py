"""
What each forwarder listener (a port forward, the CONNECT proxy, the
SOCKS5 proxy) has done, as plain numbers that other code reads: the
metrics exporter and the status page show them per forwarder.

A forwarder counts connections it accepted, streams it opened through a
tunnel (in total, and open now), and failures by reason.  The reasons are
a small fixed vocabulary (L{FAILURE_REASONS}), so that they can be metric
label values; no peer-supplied text and no secret is ever counted here.
"""

from __future__ import annotations

import attrs

__all__ = ["FAILURE_REASONS", "ForwarderStats"]

#: Why a forwarded connection failed, one word each.
FAILURE_REASONS = (
    "bad-request",  # a malformed CONNECT or SOCKS5 handshake
    "handshake-timeout",  # the handshake did not complete in time
    "too-many-handshakes",  # too many connections still handshaking: closed at once
    "unauthenticated",  # missing or wrong credentials (407, SOCKS5 auth failure)
    "caller-refused",  # a caller from outside loopback, with no tokens configured
    "client-not-allowed",  # the token is not for the client named (its clients= scope)
    "no-client",  # the target names no client (no user name, no host suffix)
    "own-listener",  # the target is one of this server's own listeners
    "client-not-connected",  # no session, local or through a peer, reaches the client
    "dial-refused",  # the client's dial rules do not allow the target
    "dial-failed",  # the client could not connect (refused, unreachable)
    "dial-timeout",  # the client's dial timed out
    "stream-error",  # the stream ended with an error after data had flowed
)


@attrs.define
class ForwarderStats:
    """
    The counters of one forwarder listener.

    @ivar name: the listener's name, unique in a server program, e.g.
        C{forward:tcp:16443:interface=127.0.0.1}, C{connect-proxy:...},
        C{socks:...}.
    @ivar kind: C{forward}, C{connect-proxy} or C{socks}.
    @ivar target: for a port forward, C{<client>:<proto>/<address>}; else empty.
    @ivar connections: connections accepted.
    @ivar streams_total: streams opened through a tunnel.
    @ivar streams_open: of those, the ones still relaying.
    @ivar failures: reason (one of L{FAILURE_REASONS}) -> count.
    """

    name: str
    kind: str
    target: str = ""
    connections: int = 0
    streams_total: int = 0
    streams_open: int = 0
    failures: dict[str, int] = attrs.Factory(dict)

    def accepted(self) -> None:
        self.connections += 1

    def stream_opened(self) -> None:
        self.streams_total += 1
        self.streams_open += 1

    def stream_closed(self) -> None:
        self.streams_open -= 1

    def failed(self, reason: str) -> None:
        """Count a failure; C{reason} must be one of L{FAILURE_REASONS}."""
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def snapshot(self) -> dict[str, object]:
        """The counters as plain data (for a JSON status page)."""
        return {
            "name": self.name, "kind": self.kind, "target": self.target,
            "connections": self.connections, "streams_total": self.streams_total,
            "streams_open": self.streams_open, "failures": dict(self.failures),
        }
