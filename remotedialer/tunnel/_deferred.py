"""
L{twisted.internet.defer.maybeDeferred}, typed for the callables here that
return a value or a Deferred of it (authorizers, dial policies, hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

from twisted.internet import defer

__all__ = ["maybe_deferred"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def maybe_deferred(
    f: Callable[_P, _T | defer.Deferred[_T]], *args: _P.args, **kwargs: _P.kwargs
) -> defer.Deferred[_T]:
    """
    C{defer.maybeDeferred(f, *args, **kwargs)}.  A Deferred that C{f}
    returns is chained, so the result is C{f}'s value either way; Twisted's
    own signature cannot say that of a C{value | Deferred[value]} union.
    """
    return cast("defer.Deferred[_T]", defer.maybeDeferred(f, *args, **kwargs))
