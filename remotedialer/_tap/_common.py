"""What both programs share: the data-debug switch Go users know."""

import os

#: Go's switch for logging every message (PROTOCOL.md 8).
DATA_DEBUG_ENV = "CATTLE_TUNNEL_DATA_DEBUG"


def data_debug(flag: bool) -> bool:
    """Message tracing is on with --debug or CATTLE_TUNNEL_DATA_DEBUG=true."""
    return flag or os.environ.get(DATA_DEBUG_ENV, "").lower() == "true"
