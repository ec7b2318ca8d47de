"""
The admin endpoint of a server or a client, as twisted.web resources:

  - C{/metrics}: Prometheus text format (L{remotedialer.ops._metrics.render});
  - C{/healthz}: 200 while the process runs (a liveness probe);
  - C{/readyz}: 200 once every readiness check passes (a server listening,
    a client's tunnel up), else 503 with the reasons (a readiness probe);
  - C{/status}: JSON of L{remotedialer.ops._status} (C{?limit=N}: the N busiest
    clients), plus any extra sections;
  - C{/}: a page showing C{/status} live (it fetches it every 2 s,
    C{?refresh=SECONDS}), with no external asset.

Every body is rendered on the reactor thread from live state.  Nothing in
them is a secret, and peer-supplied text reaches the page only as text
(the page's script sets C{textContent}, never markup; a Content Security
Policy allows only the page's own script and style, by hash).  The endpoint
has no authentication: listen on loopback, or where only probes and
Prometheus reach it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.logger import Logger
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import EncodingResourceWrapper, IResource, NoResource, Resource
from twisted.web.server import GzipEncoderFactory

from remotedialer.ops._metrics import CONTENT_TYPE, render
from remotedialer.server._site import BoundedSite

__all__ = ["AdminEndpoint", "AdminSite"]

#: A readiness check: None when ready, else why not (one line).
ReadinessCheck = Callable[[], "str | None"]


def _page() -> tuple[bytes, str]:
    """The status page, and the Content-Security-Policy that lets its own script and style run."""
    page = resources.files("remotedialer.ops").joinpath("_statuspage.html").read_bytes()

    def hashes(tag: bytes) -> str:
        bodies = re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in bodies)

    policy = (f"default-src 'none'; script-src {hashes(b'script')}; style-src {hashes(b'style')}; "
              "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return page, policy


def _headers(request: IRequest, content_type: str) -> None:
    request.setHeader(b"Content-Type", content_type.encode())
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")


class _Gzip(GzipEncoderFactory):
    """gzip at a level that costs little CPU per scrape (Twisted's default is 9)."""

    compressLevel = 6


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[IRequest], bytes]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self._render = render

    def render_GET(self, request: IRequest) -> bytes:
        return self._render(request)


class _Page(Resource):
    """C{/}: the status page; the other paths are its children."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self._body, self._policy = _page()

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"":
            return self
        return NoResource()

    def render_GET(self, request: IRequest) -> bytes:
        _headers(request, "text/html; charset=utf-8")
        request.setHeader(b"Content-Security-Policy", self._policy.encode())
        request.setHeader(b"X-Frame-Options", b"DENY")
        return self._body


class AdminEndpoint:
    """
    The admin endpoint of one program: its metrics registry, its status and
    its readiness.  Extend it before serving: C{registry.register(collector)}
    for more metrics, C{status_sections[name] = callable} for more of
    C{/status} (plain data; the page shows it as JSON), and
    C{readiness_checks.append(check)} (e.g. "draining").
    """

    log = Logger()

    def __init__(
        self,
        registry: CollectorRegistry,
        status: Callable[[int | None], dict[str, Any]],
        readiness_checks: list[ReadinessCheck] | None = None,
    ) -> None:
        self.registry = registry
        self._status = status
        self.status_sections: dict[str, Callable[[], object]] = {}
        self.readiness_checks: list[ReadinessCheck] = list(readiness_checks or [])

    def status(self, limit: int | None = None) -> dict[str, Any]:
        """The status, with the extra sections (one that fails says so, and is logged)."""
        result = self._status(limit)
        for name, section in self.status_sections.items():
            try:
                result[name] = section()
            except Exception:
                self.log.failure("status section {name} failed", name=name)
                result[name] = {"error": "this section failed; see the log"}
        return result

    def not_ready(self) -> list[str]:
        """Why the program is not ready (empty: it is)."""
        reasons = []
        for check in self.readiness_checks:
            try:
                reason = check()
            except Exception:
                self.log.failure("readiness check failed")
                reason = "a readiness check failed; see the log"
            if reason:
                reasons.append(reason)
        return reasons

    # The resources.

    def resource(self) -> IResource:
        """The admin tree: C{/}, C{/metrics}, C{/healthz}, C{/readyz}, C{/status}."""
        root = _Page()
        # A scrape of thousands of clients is hundreds of KiB: gzip for who asks.
        gzip = [_Gzip()]
        root.putChild(b"metrics", EncodingResourceWrapper(_Leaf(self._render_metrics), gzip))
        root.putChild(b"healthz", _Leaf(self._render_health))
        root.putChild(b"readyz", _Leaf(self._render_ready))
        root.putChild(b"status", EncodingResourceWrapper(_Leaf(self._render_status), gzip))
        return root

    def _render_metrics(self, request: IRequest) -> bytes:
        _headers(request, CONTENT_TYPE)
        return render(self.registry)

    def _render_health(self, request: IRequest) -> bytes:
        _headers(request, "text/plain; charset=utf-8")
        return b"ok\n"

    def _render_ready(self, request: IRequest) -> bytes:
        _headers(request, "text/plain; charset=utf-8")
        reasons = self.not_ready()
        if not reasons:
            return b"ready\n"
        request.setResponseCode(503)
        return ("not ready: " + "; ".join(reasons) + "\n").encode("utf-8", "backslashreplace")

    def _render_status(self, request: IRequest) -> bytes:
        limit: int | None = None
        values = (request.args or {}).get(b"limit")
        if values:
            try:
                limit = int(values[0])
                if limit < 0:
                    raise ValueError
            except ValueError:
                _headers(request, "text/plain; charset=utf-8")
                request.setResponseCode(400)
                return b"limit must be a whole number of clients\n"
        _headers(request, "application/json")
        # Escaped so that no '<' (a '</script>') or non-ASCII ever reaches the body raw.
        text = json.dumps(self.status(limit), ensure_ascii=True, sort_keys=True, allow_nan=False)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")


class AdminSite(BoundedSite):
    """
    A Site for the admin endpoint: no access log line per probe or scrape,
    no traceback in a body; every request bounded as the server's are, and
    HEAD answered with no body (L{BoundedSite}).
    """

    displayTracebacks = False

    def __init__(self, endpoint: AdminEndpoint, **kwargs: Any) -> None:
        super().__init__(endpoint.resource(), **kwargs)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16653
        self.noisy = False

    def logPrefix(self) -> str:
        """Its listening port logs "admin endpoint starting on <port>"."""
        return "admin endpoint"

    def log(self, request: http.Request) -> None:
        """Probes and scrapes come every few seconds: they are not logged."""
