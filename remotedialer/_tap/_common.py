"""What both programs share: the data-debug switch Go users know, CA files."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.python import usage

from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._limits import SessionLimits, UpgradeLimits

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

_T = TypeVar("_T")
#: (flag, SessionLimits/FlowLimits/UpgradeLimits field, type, help)
_Flag = tuple[str, str, type[int] | type[float], str]

class VersionOption:
    """C{--version} of our programs: our version (twistd's own says Twisted's)."""

    def opt_version(self) -> None:
        """Display remotedialer's version and exit."""
        from remotedialer import __version__

        print(f"remotedialer {__version__}")
        raise SystemExit(0)


#: Go's switch for logging every message (docs/protocol.md section 8).
DATA_DEBUG_ENV = "CATTLE_TUNNEL_DATA_DEBUG"


def data_debug(flag: bool) -> bool:
    """Message tracing is on with --debug or CATTLE_TUNNEL_DATA_DEBUG=true."""
    return flag or os.environ.get(DATA_DEBUG_ENV, "").lower() == "true"


def load_ca_file(flag: str, path: str) -> IOpenSSLTrustRoot:
    """
    A trust root of every certificate in the PEM file at C{path} (a bundle
    may hold several); a bad file is a usage error naming C{flag}.
    """
    marker = b"-----BEGIN CERTIFICATE-----"
    try:
        with open(path, "rb") as f:
            pem = f.read()
        certificates = [Certificate.loadPEM(marker + part) for part in pem.split(marker)[1:]]
        if not certificates:
            raise ValueError("no PEM certificate in it")
    except Exception as e:
        raise usage.UsageError(f"--{flag} {path!r}: {e}") from None
    trust_root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)
    return trust_root


# The limits both programs take (SessionLimits, FlowLimits); the server adds
# UpgradeLimits.  Sizes are bytes, times seconds.

_SESSION_FLAGS: list[_Flag] = [
    ("max-message-size", "max_message_size", int,
     "Largest WebSocket message accepted, bytes (bigger: close 1009)."),
    ("message-deadline", "message_deadline", float,
     "Seconds a started WebSocket message may take to finish."),
    ("max-streams", "max_streams", int, "Streams open at once per tunnel session."),
    ("max-pending-dials", "max_pending_dials", int, "Dials in progress at once per tunnel session."),
    ("session-buffer", "session_buffer", int,
     "Bytes a tunnel session may pin for slow readers (its receive buffers get 15/16: past half "
     "of that, Pause all; past it, end the largest)."),
    ("send-high-water", "send_high_water", int,
     "Bytes of replies queued to a peer that does not read, before we stop reading from it."),
    ("max-connect-target", "max_connect_target", int,
     "Longest dial target ('proto/host:port', bytes) accepted from the far side (Go reads at most 266)."),
]
_FLOW_FLAGS: list[_Flag] = [
    ("stream-buffer", "hard_cap", int,
     "Bytes held for one slow reader before its stream is cut (the far side ignored Pause)."),
]
_UPGRADE_FLAGS: list[_Flag] = [
    ("upgrade-timeout", "timeout", float, "Seconds a connection may take to send its request head."),
    ("max-pending-upgrades", "max_pending", int,
     "Connections at once still sending their request head; more are closed at once."),
    ("max-header-bytes", "header_bytes", int,
     "Largest request head accepted (bigger: 431), and response head the front door reads (bigger: 502)."),
    ("max-headers", "max_headers", int,
     "Most header lines in a request head accepted (431) or a response head read (502)."),
]


def _parameters(flags: list[_Flag], defaults: object) -> list[list[object]]:
    return [[flag, None, getattr(defaults, field), text, kind] for flag, field, kind, text in flags]


def limit_parameters(upgrade: bool = False) -> list[list[object]]:
    """optParameters entries for the limits, with the library's defaults."""
    parameters = _parameters(_SESSION_FLAGS, SessionLimits()) + _parameters(_FLOW_FLAGS, FlowLimits())
    if upgrade:
        parameters += _parameters(_UPGRADE_FLAGS, UpgradeLimits())
    return parameters


def _build(cls: Callable[..., _T], flags: list[_Flag], options: usage.Options) -> _T:
    values = {field: options[flag] for flag, field, _kind, _text in flags}
    try:
        return cls(**values)
    except ValueError as e:
        names = ", ".join(f"--{flag}" for flag, *_ in flags)
        raise usage.UsageError(f"{names}: {e}") from None


def parse_limits(options: usage.Options, upgrade: bool = False) -> None:
    """Check the limit options; store SessionLimits/FlowLimits (and UpgradeLimits) in C{options}."""
    options["session_limits"] = _build(SessionLimits, _SESSION_FLAGS, options)
    defaults = FlowLimits()
    if options["stream-buffer"] <= defaults.pause_threshold:
        raise usage.UsageError(
            f"--stream-buffer must be over the Pause threshold ({defaults.pause_threshold} bytes)")
    options["flow_limits"] = _build(FlowLimits, _FLOW_FLAGS, options)
    if upgrade:
        options["upgrade_limits"] = _build(UpgradeLimits, _UPGRADE_FLAGS, options)


def _named(flag: str, kind: Callable[[str], object]) -> Callable[[str], object]:
    def coerce(value: str) -> object:
        try:
            return kind(value)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise ValueError(f"--{flag} {value!r} is not {noun}") from None

    return coerce


def flags_named_in_errors(cls: type[_T]) -> type[_T]:
    """
    Class decorator for a program's Options: a number flag given something
    else says which flag (Twisted's own message does not: "Parameter type
    enforcement failed: could not convert string to float: 'x'").
    """
    parameters = getattr(cls, "optParameters", [])
    for entry in parameters:
        if len(entry) > 4 and entry[4] in (int, float):
            entry[4] = _named(str(entry[0]), entry[4])
    return cls
