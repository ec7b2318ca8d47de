"""
The server program's web site: twisted.web's Site, with the access log
opt-in.

An access-log line per request, written synchronously, was a fifth of the
server's time on small front-door requests (Go logs none by default), so
it is off unless asked for (C{--access-log}).
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import Request
from twisted.web.server import Site


class ServerSite(Site):
    """A Site whose access log is off unless C{access_log}, and which says nothing of itself."""

    noisy = False  # no "Starting factory <repr>": the listening port logs where it listens

    def __init__(self, resource: Any, access_log: bool = False, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        self.access_log = access_log

    def log(self, request: Request) -> None:
        if self.access_log:
            super().log(request)
