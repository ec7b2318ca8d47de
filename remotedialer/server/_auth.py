"""
Ready tunnel authorizers: who may connect as which client.

The example server of Go's remotedialer takes any C{X-Tunnel-ID}, so
anyone who reaches it can claim any client's key.  These authorizers bind a
key to a credential:

  - L{TokenAuthorizer}: per-client tokens.  A clients file lists each
    client id with the SHA-256 of its token; a client presents
    C{X-Tunnel-ID: <id>} and C{Authorization: Bearer <token>} (a Go agent
    can send the same headers).  Tokens are compared in constant time and
    never stored or logged; the file is re-read on SIGHUP by the program.
  - L{CertificateAuthorizer}: mutual TLS.  The client id is the common name
    (or the first DNS name) of the certificate the TLS listener verified;
    a header cannot forge it.

Both return L{Credentials}: the key and a fingerprint of what proved it, so
the server can tell a client reconnecting (same credential: the new session
replaces the old) from a stranger (another credential: refused).

Callers of the front door and the proxies have tokens of their own, in a
front-door tokens file (L{TokenFile}, re-read on SIGHUP), one a line:

    [label] sha256:<hex of the token's SHA-256> [clients=<id or glob>,...]

A line without C{clients=} is a token for every client (what every line
meant before scopes); with it, the token may use only the clients named:
exact ids, or globs where C{*} stands for any characters (C{bar-*}).  A
token listed on several lines may use what all of them name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from remotedialer.protocol._clientkey import client_key_problem
from remotedialer.tunnel._identity import Credentials
from remotedialer.tunnel._interfaces import ITunnelAuthorizer

__all__ = [
    "EVERY_CLIENT",
    "CertificateAuthorizer",
    "ClientScope",
    "TokenAuthorizer",
    "TokenFile",
    "hash_token",
    "load_token_hashes",
    "load_tokens",
    "read_secret",
    "secret_from",
    "token_matches",
    "token_scope",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def hash_token(token: str | bytes) -> str:
    """The hex SHA-256 of a token, as a clients file holds it (C{sha256:<hex>})."""
    if isinstance(token, str):
        token = token.encode("utf-8")
    return hashlib.sha256(token).hexdigest()


def read_secret(path: str) -> str:
    """
    A secret from a file (its first line, whitespace stripped): tokens are
    given as files or environment variables, never on the command line
    (where C{ps} shows them).  ValueError for an empty file.
    """
    with open(path, encoding="utf-8") as f:
        secret = f.readline().strip()
    if not secret:
        raise ValueError(f"{path}: empty")
    return secret


def _bearer(request: IRequest) -> bytes | None:
    value = request.getHeader(b"Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


@implementer(ITunnelAuthorizer)
class TokenAuthorizer:
    """
    Per-client tokens from a clients file (see module docstring).  Each line
    is C{<client id> sha256:<hex of the token's SHA-256>}; blank lines and
    lines starting with C{#} are skipped.  L{reload} re-reads it; a bad file
    raises ValueError naming the line, and the previous table stays.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._digests: dict[str, bytes] = {}
        self.reload()

    def reload(self) -> int:
        """Re-read the clients file; how many clients it lists."""
        digests: dict[str, bytes] = {}
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                client_id, _, digest = line.partition(" ")
                digest = digest.strip().removeprefix("sha256:").lower()
                if not client_id or not _HEX64.fullmatch(digest):
                    raise ValueError(
                        f"{self.path} line {number}: not '<client id> sha256:<64 hex digits>'")
                if client_id in digests:
                    raise ValueError(f"{self.path} line {number}: client id listed twice")
                digests[client_id] = bytes.fromhex(digest)
        self._digests = digests
        return len(digests)

    def authorize(self, request: IRequest) -> Credentials | None:
        client_id = request.getHeader(b"X-Tunnel-ID")
        token = _bearer(request)
        if not client_id or token is None:
            return None
        key = client_id.decode("utf-8", "replace")
        presented = hashlib.sha256(token).digest()
        expected = self._digests.get(key)
        # Compare even for an unknown id, so timing tells nothing.
        if hmac.compare_digest(presented, expected if expected is not None else bytes(32)) and expected:
            return Credentials(key, "token:" + presented.hex()[:16])
        return None


@implementer(ITunnelAuthorizer)
class CertificateAuthorizer:
    """
    Mutual TLS: the client id comes from the peer certificate that the TLS
    listener verified against its client CA (see module docstring).  A
    request with no verified certificate is refused (401).
    """

    def authorize(self, request: IRequest) -> Credentials | None:
        transport: Any = getattr(request, "transport", None)
        if transport is None or not ISSLTransport.providedBy(transport):
            return None
        certificate: Any = transport.getPeerCertificate()
        if certificate is None:
            return None
        cert = certificate.to_cryptography()
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if not names:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                names = san.value.get_values_for_type(x509.DNSName)
            except x509.ExtensionNotFound:
                names = []
        if not names or not isinstance(names[0], str):
            return None
        return Credentials(names[0], "cert:" + cert.fingerprint(hashes.SHA256()).hex()[:16])


@attrs.frozen
class ClientScope:
    """
    The clients a front-door token may use: C{patterns}, each a client id
    or a glob where C{*} stands for any characters (nothing else is
    special); None: every client.
    """

    patterns: tuple[str, ...] | None = None
    _match: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        match = None
        if self.patterns is not None:
            match = re.compile("|".join(".*".join(map(re.escape, p.split("*"))) for p in self.patterns)
                               or "(?!)", re.DOTALL)
        object.__setattr__(self, "_match", match)

    def allows(self, client_key: str) -> bool:
        """C{client_key} is one of the clients."""
        return self._match is None or self._match.fullmatch(client_key) is not None

    def __or__(self, other: ClientScope) -> ClientScope:
        """The clients of both."""
        if self.patterns is None or other.patterns is None:
            return EVERY_CLIENT
        return ClientScope(tuple(dict.fromkeys(self.patterns + other.patterns)))


#: The scope of a token line without C{clients=}.
EVERY_CLIENT = ClientScope()

_SCOPE_PREFIX = "clients="
_TOKEN_LINE = "'[label] sha256:<64 hex digits> [clients=<id or glob>,...]'"


def _parse_scope(text: str) -> ClientScope:
    """C{foo,bar-*} (the value of C{clients=}); ValueError naming what is wrong."""
    patterns = text.split(",")
    for pattern in patterns:
        if not pattern:
            raise ValueError("clients= has an empty name (write clients=foo,bar-*)")
        problem = client_key_problem(pattern.replace("*", "x"))
        if problem is not None:
            raise ValueError(f"clients=: {problem.replace('client key', 'a client name')}")
    return ClientScope(tuple(patterns))


def load_tokens(path: str) -> dict[bytes, ClientScope]:
    """
    A front-door tokens file (see module docstring): each token's SHA-256,
    and the clients it may use.  C{#} comments and blank lines are
    skipped; a malformed line raises ValueError naming it.
    """
    tokens: dict[bytes, ClientScope] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            scope = EVERY_CLIENT
            if fields[-1].startswith(_SCOPE_PREFIX):
                try:
                    scope = _parse_scope(fields.pop()[len(_SCOPE_PREFIX):])
                except ValueError as e:
                    raise ValueError(f"{path} line {number}: {e}") from None
            digest = fields[-1].removeprefix("sha256:").lower() if fields else ""
            if not _HEX64.fullmatch(digest) or any(field.startswith(_SCOPE_PREFIX) for field in fields):
                # (a clients= before the digest would otherwise be read as a
                # label, making the token one for every client)
                raise ValueError(f"{path} line {number}: not {_TOKEN_LINE}")
            key = bytes.fromhex(digest)
            tokens[key] = tokens[key] | scope if key in tokens else scope
    if not tokens:
        raise ValueError(f"{path}: no token hashes in it")
    return tokens


def load_token_hashes(path: str) -> frozenset[bytes]:
    """The token hashes of a front-door tokens file (L{load_tokens} without the scopes)."""
    return frozenset(load_tokens(path))


class TokenFile(Mapping[bytes, ClientScope]):
    """
    A front-door tokens file (L{load_tokens}): each token's SHA-256 and the
    clients it may use, which L{reload} reads again (on SIGHUP); whoever
    holds it (the front door, the proxies) checks against the current
    ones.  A file that fails to load leaves the previous tokens in place.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens = load_tokens(path)

    def reload(self) -> int:
        """Read the file again; the number of tokens (raises OSError/ValueError, keeping the old ones)."""
        self._tokens = load_tokens(self.path)
        return len(self._tokens)

    def __getitem__(self, digest: bytes) -> ClientScope:
        return self._tokens[digest]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)


def token_matches(token: bytes, digests: Iterable[bytes]) -> bool:
    """C{token}'s SHA-256 is one of C{digests}, compared in constant time against each."""
    return token_scope(token, digests) is not None


def token_scope(token: bytes, tokens: Iterable[bytes] | Mapping[bytes, ClientScope]) -> ClientScope | None:
    """
    The clients C{token} may use if its SHA-256 is one of C{tokens}
    (compared in constant time against each), else None.  C{tokens} is a
    mapping of digests to scopes (a L{TokenFile}), or plain digests, each
    a token for every client.
    """
    presented = hashlib.sha256(token).digest()
    found = None
    for digest in tokens:
        if hmac.compare_digest(presented, digest):
            found = digest
    if found is None:
        return None
    return tokens[found] if isinstance(tokens, Mapping) else EVERY_CLIENT


def secret_from(path: str | None, env: str | None) -> str | None:
    """A secret from C{path} (a file) or the environment variable C{env}, in that order."""
    if path:
        return read_secret(path)
    if env and os.environ.get(env):
        return os.environ[env].strip()
    return None
