"""What both programs share: the data-debug switch Go users know, CA files."""

import os

from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.python import usage

#: Go's switch for logging every message (PROTOCOL.md 8).
DATA_DEBUG_ENV = "CATTLE_TUNNEL_DATA_DEBUG"


def data_debug(flag: bool) -> bool:
    """Message tracing is on with --debug or CATTLE_TUNNEL_DATA_DEBUG=true."""
    return flag or os.environ.get(DATA_DEBUG_ENV, "").lower() == "true"


def load_ca_file(flag: str, path: str):
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
    return trustRootFromCertificates(certificates)
