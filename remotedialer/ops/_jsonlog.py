"""
Log events as one JSON object per line, for log collectors (Loki, Elastic,
Cloud Logging, journald's JSON readers).

Twisted's own L{twisted.logger.jsonFileLogObserver} serialises I{whole}
events so that they can be loaded back into Python (the logger, the
source object, the level constant, each as a nested object): that is
persistence, not something an operator greps.  Here each line holds what a
reader wants -- C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{text}
(the event formatted, as the text log shows it) -- and the event's own
fields that are plain values: our events carry C{client_key},
C{session_id}, C{stream_id}, C{peer}, C{remote_addr}, C{url}, C{reason},
C{lived} (seconds).  A field holding an object never reaches the line as
its repr: a tunnel session contributes its C{client_key} and
C{session_id}, anything else is left out.  A failure becomes C{error} (its
message) and C{traceback}.

The observer plugs into twistd either way:

    twistd -n --pidfile= remotedialer-server --log-format json ...
    twistd -n --pidfile= --logger remotedialer.json_log_observer remotedialer-server ...

(the second works for any twistd program).  It writes to standard output,
where containers and systemd collect logs.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, LogEvent, formatEvent

__all__ = ["event_as_json_line", "json_log_observer"]

#: Our own field names for the things most lines are about.
_SESSION_FIELDS = (("client_key", "client_key"), ("session_key", "session_id"))


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _session_fields(value: object) -> dict[str, Any]:
    """A tunnel session (or anything with a client key and session key) as fields, not a repr."""
    fields = {}
    for attribute, name in _SESSION_FIELDS:
        found = getattr(value, attribute, None)
        if found is not None and _plain(found):
            fields[name] = found
    return fields if len(fields) == len(_SESSION_FIELDS) else {}


def event_as_json_line(event: LogEvent) -> str:
    """One event as a JSON object on one line (newline included)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage() or getattr(failure.type, "__name__", "error")
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record:
            continue
        if _plain(value):
            record[key] = value
        else:
            for name, field in _session_fields(value).items():
                record.setdefault(name, field)
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_log_observer(out: IO[str] | None = None) -> FileLogObserver:
    """
    A log observer writing L{event_as_json_line} lines to C{out} (default
    standard output): also a twistd C{--logger} factory.
    """
    return FileLogObserver(out if out is not None else sys.stdout, event_as_json_line)
