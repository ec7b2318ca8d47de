"""
Operations: what a server or client is doing, for people and monitors.
Metrics, the status data, the admin endpoint and its page, the logs' last
filter and their JSON format.
Nothing below imports this package: it reads the library through its
public objects and observer hooks (L{ITrafficObserver}).

Module map:
    _metrics   Prometheus metrics: Go's counters, gauges read at scrape time
    _status    what a server or client is doing now, as plain data
    _admin     the admin endpoint: /metrics, /healthz, /readyz, /status, the page
    _logfilter the last line of defence of the logs: bounded, escaped, no repr
    _jsonlog   log events as one JSON object per line
"""

from remotedialer.ops._admin import AdminEndpoint, AdminSite
from remotedialer.ops._jsonlog import json_log_observer
from remotedialer.ops._metrics import ClientMetrics, MetricsOptions, ServerMetrics
from remotedialer.ops._status import client_status, server_status

__all__ = [
    "ClientMetrics",
    "MetricsOptions",
    "ServerMetrics",
    "client_status",
    "server_status",
    "AdminEndpoint",
    "AdminSite",
    "json_log_observer",
]
