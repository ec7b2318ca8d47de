"""
Who is at the other end of a tunnel, as plain values: what an authorizer
settles (L{Credentials}) and what a session is told (L{Identity}).  Both
sides' WebSocket protocols and the server's resource speak of them.
"""

from __future__ import annotations

import attrs

__all__ = ["Credentials", "Identity"]


@attrs.frozen
class Identity:
    """
    Who is at the other end of a tunnel, settled before the upgrade.
    C{fingerprint} names the credential that proved the key (None: the
    authorizer vouched for the key alone).
    """

    client_key: str
    is_peer: bool = False
    fingerprint: str | None = None


@attrs.frozen
class Credentials:
    """What an authorizer settled: the client key, and a fingerprint of the credential."""

    client_key: str
    fingerprint: str
