"""
C{--header-file}: the client's extra upgrade headers from a file, one
C{Name: value} a line, as Go's client is given headers in code -- so that a
header carrying a secret (a proxy's credentials, a gateway key) is not on
the command line, where C{ps} shows it.  Mistakes name the line, never its
text (it may be a secret).
"""

from __future__ import annotations

from twisted.python import usage

from remotedialer.protocol._text import printable


def read_header_file(path: str) -> dict[str, str]:
    """The headers in C{path}; blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--header-file: {printable(str(e))}") from None
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or not name.isascii() or any(c in name for c in " \t") \
                or not value.strip().isprintable():
            raise usage.UsageError(f"--header-file {path!r} line {number}: not 'Name: value'")
        headers[name] = value.strip()
    return headers
