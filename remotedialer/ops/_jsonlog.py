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

Each line is made safe as the text log's are
(L{remotedialer.ops._logfilter}): C{text} escaped and free of reprs, no
control character left raw in the line (JSON escapes them), and the line at
most 2 KiB: its longest values are cut to fit, a traceback from its start
(its end says what failed), with a marker saying how much was left out.

The observer plugs into twistd either way:

    twistd -n --pidfile= remotedialer-server --log-format json ...
    twistd -n --pidfile= --logger remotedialer.json_log_observer remotedialer-server ...

(the second works for any twistd program).  It writes to standard output,
where containers and systemd collect logs.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, LogEvent, formatEvent

from remotedialer.ops._logfilter import MAX_LINE_BYTES, cut_bytes, escape, safe_event

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


#: The keys every line keeps whole.
_FIXED = ("time", "level", "namespace")
#: Longest string field (characters) before the line's own bound applies.
_FIELD_LIMIT = 512
#: A character JSON leaves raw that is not printable (C1 controls, line separators).
_RAW = re.compile(r"[^\x20-\x7e]")


def _json_escaped(match: re.Match[str]) -> str:
    char = match.group()
    return char if char.isprintable() else json.dumps(char)[1:-1]


def _dumps(record: dict[str, Any]) -> str:
    line = json.dumps(record, ensure_ascii=False)
    return line if line.isascii() else _RAW.sub(_json_escaped, line)


def _fit(record: dict[str, Any]) -> str:
    """The record as one JSON line of at most MAX_LINE_BYTES: its longest strings cut until it fits."""
    line = _dumps(record)
    for _ in range(len(record)):
        excess = len(line.encode("utf-8")) - MAX_LINE_BYTES
        if excess <= 0:
            return line
        cuttable = [key for key, value in record.items() if key not in _FIXED and isinstance(value, str)]
        if not cuttable:
            break
        key = max(cuttable, key=lambda k: len(record[k]))
        value = record[key]
        # (a character is at least one byte of the line, more when JSON escapes it)
        room = max(0, len(value.encode("utf-8")) - excess - 16)
        record[key] = cut_bytes(value, room, keep_end=key == "traceback")
        line = _dumps(record)
    if len(line.encode("utf-8")) <= MAX_LINE_BYTES:
        return line
    # (many fields: only the text is kept)
    kept = {key: record[key] for key in _FIXED}
    kept["text"] = cut_bytes(str(record.get("text", "")), MAX_LINE_BYTES // 4)
    return _dumps(kept)


def event_as_json_line(event: LogEvent) -> str:
    """One event as a JSON object on one line (newline included), at most MAX_LINE_BYTES before it."""
    level = event.get("log_level")
    safe = safe_event(event)
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(safe),
    }
    failure = event.get("log_failure")
    if failure is not None:
        message = failure.getErrorMessage() or getattr(failure.type, "__name__", "error")
        record["error"] = cut_bytes(escape(message), _FIELD_LIMIT)
        record["traceback"] = "\n".join(escape(line) for line in failure.getTraceback().split("\n"))
    for key, value in safe.items():
        if key.startswith("log_") or key in record:
            continue
        if isinstance(value, str):
            record[key] = cut_bytes(value, _FIELD_LIMIT)
        elif _plain(value):
            record[key] = value
        else:
            for name, field in _session_fields(value).items():
                record.setdefault(name, field)
    return _fit(record) + "\n"


def json_log_observer(out: IO[str] | None = None) -> FileLogObserver:
    """
    A log observer writing L{event_as_json_line} lines to C{out} (default
    standard output): also a twistd C{--logger} factory.
    """
    return FileLogObserver(out if out is not None else sys.stdout, event_as_json_line)
