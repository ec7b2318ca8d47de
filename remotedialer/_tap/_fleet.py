"""
The server program's flags for a fleet of agents, many of them behind one
address: the listen backlog (C{--backlog}), more tunnel listeners
(C{--also-listen}, e.g. a C{haproxy:} one for a load balancer that speaks
the PROXY protocol, beside a plain one for peers), the proxies whose
C{X-Forwarded-For} names the caller (C{--trusted-proxy}), and the
authentication limiter's settings (C{--auth-*},
L{remotedialer.server._ratelimit}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.python import usage

from remotedialer._tap._listen import DEFAULT_BACKLOG, check_backlog, check_listen, plan
from remotedialer.protocol._text import printable
from remotedialer.server import _ratelimit as limits
from remotedialer.server._forwarded import TrustedProxies, parse_network
from remotedialer.server._ratelimit import FailureLimiter

#: The programs' --backlog (the client's admin listener takes it too).
BACKLOG_PARAMETER: list[Any] = [
    "backlog", None, DEFAULT_BACKLOG,
    "Listen backlog of every listener (connections the kernel queues before they are accepted; "
    "capped by net.core.somaxconn): a thousand agents redialing at once need far more than "
    "Twisted's 50. A description's own backlog= wins.", int]

#: (flag, FailureLimiter keyword)
_LIMITER_FLAGS = [
    ("auth-failures-per-second", "failures_per_second"),
    ("auth-failure-burst", "failure_burst"),
    ("auth-max-waiting", "max_waiting"),
    ("auth-forget-after", "forget_after"),
    ("auth-max-failing-ids", "max_ids"),
]

PARAMETERS: list[list[Any]] = [
    BACKLOG_PARAMETER,
    ["auth-failures-per-second", None, limits.FAILURES_PER_SECOND,
     "Failed tunnel authentications one address may have a second, in the long run (its failure "
     "budget's refill); a success costs nothing and never waits.", float],
    ["auth-failure-burst", None, limits.FAILURE_BURST,
     "Failed tunnel authentications one address may have at once (its failure budget).", int],
    ["auth-max-waiting", None, limits.MAX_WAITING,
     "Attempts of one address that may wait for its failure budget at once; more get 429 "
     "with Retry-After.", int],
    ["auth-forget-after", None, limits.FORGET_AFTER,
     "Seconds after its last failure that a client id failing from an address is forgotten "
     "(until then, its attempts from there wait for the address's failure budget).", float],
    ["auth-max-failing-ids", None, limits.MAX_IDS,
     "Client ids failing from one address past which every attempt from there waits for its "
     "failure budget (a guesser naming new ids gets no more at once).", int],
]


class FleetOptions:
    """The repeatable flags, for the server's Options (usage.Options gathers them from every base)."""

    def opt_also_listen(self, description: str) -> None:
        """Also serve what --listen serves on ENDPOINT (repeatable), e.g. haproxy:tcp:8443 for a
        load balancer that sends the PROXY protocol, beside a plain --listen for peers."""
        check_listen("also-listen", description)
        self.setdefault("also_listen", []).append(description)  # type: ignore[attr-defined]  # usage.Options is a dict

    def opt_trusted_proxy(self, cidr: str) -> None:
        """Believe X-Forwarded-For on the tunnel path from these addresses (CIDR; repeatable): the
        load balancers or Ingress controllers in front (the caller's address is then its own)."""
        try:
            parse_network(cidr)
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy: {printable(str(e))}") from None
        self.setdefault("trusted_proxy", []).append(cidr)  # type: ignore[attr-defined]  # usage.Options is a dict


def check(options: usage.Options) -> None:
    """One-line usage errors for the flags above; stores C{trusted_proxies}; plans the extra listeners."""
    check_backlog(options)
    try:
        FailureLimiter(Clock(), **limiter_settings(options))
    except ValueError as e:
        names = ", ".join(f"--{flag}" for flag, _ in _LIMITER_FLAGS)
        raise usage.UsageError(f"{names}: {printable(str(e))}") from None
    options["trusted_proxies"] = TrustedProxies.parse(options.get("trusted_proxy", []))
    also = options.setdefault("also_listen", [])
    if options["tls_options"] is not None and not all(
            d.startswith(("tcp:", "haproxy:tcp:")) for d in also):
        raise usage.UsageError("--tls-cert/--tls-key make TLS listeners on tcp: (or haproxy:tcp:) "
                               "--listen and --also-listen")
    for description in also:  # the server's own listeners: never a front-door or proxy target
        plan(options["frontdoor_access"].own, description)


def limiter_settings(options: usage.Options) -> dict[str, Any]:
    """FailureLimiter(...) keyword arguments from the --auth-* flags."""
    return {keyword: options[flag] for flag, keyword in _LIMITER_FLAGS}


def limiter(options: usage.Options, clock: IReactorTime) -> FailureLimiter:
    return FailureLimiter(clock, **limiter_settings(options))
