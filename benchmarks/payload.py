"""
The payload: deterministic bytes that every part of the suite can produce
and check without sending the expected data around.

Chunk C{i} of payload C{seed} starts with C{(seed, i)} packed big-endian, then
fixed pseudo-random bytes, so a lost, repeated, reordered or cross-wired
chunk changes the sha256.  Standard library only: the load generator imports
this without Twisted.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct

#: 64 KiB: under glibc's mmap threshold, so a chunk costs no page faults
#: (fresh 256 KiB allocations were a third of a sender's CPU).
CHUNK = 64 * 1024
_HEAD = struct.Struct(">IQ")  # seed, chunk index
_BASE = random.Random(0x5EED).randbytes(CHUNK)
_BASE_VIEW = memoryview(_BASE)


def payload_chunks(size: int, seed: int = 0):
    """The payload C{seed} of C{size} bytes, in chunks of at most L{CHUNK}."""
    sent = 0
    index = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        head = _HEAD.pack(seed, index)
        yield b"".join((head, _BASE_VIEW[len(head):n])) if n > len(head) else head[:n]  # one copy
        sent += n
        index += 1


def payload_bytes(size: int, seed: int = 0) -> bytes:
    """The whole payload at once (for small sizes)."""
    return b"".join(payload_chunks(size, seed))


@functools.cache
def payload_sha256(size: int, seed: int = 0) -> bytes:
    """The payload's sha256 digest (cached: computing 1 GiB takes a second)."""
    h = hashlib.sha256()
    for chunk in payload_chunks(size, seed):
        h.update(chunk)
    return h.digest()
