"""
Dial rules: which C{proto/address} targets the far side of a tunnel may have
us dial.  Rules are parsed, never globbed, and targets are canonicalised
before they are compared, so one address has one spelling.

A rule is C{proto/host:port}:

  - C{proto}: C{tcp} (or C{*}, the same) for TCP over IPv4 or IPv6;
    C{tcp4} or C{tcp6} for TCP to addresses of that family only; C{unix}.
  - C{host}, one of:
      - an IPv4 address, C{10.0.0.5}, or range, C{10.0.0.0/8} (standard
        dotted quads only: C{0177.0.0.1} in a rule is an error);
      - a bracketed IPv6 address, C{[::1]}, or range, C{[fd00::/8]}
        (IPv4-mapped forms, C{[::ffff:10.0.0.5]}, mean the IPv4 address);
      - a host name, C{db.internal}: compared without case and without a
        trailing dot, as whole names;
      - C{*.} and a host name, C{*.svc.cluster.local}: any name ending in
        one or more whole labels before C{.svc.cluster.local} (not
        C{svc.cluster.local} itself).  C{*} anywhere else is an error: to
        allow a range of addresses, write a CIDR range.
  - C{port}: C{443}, a list C{80,443}, a range C{8000-8100} (both ends
    included), a list of both C{80,8000-8100}, or C{*} for any port.
  - C{unix/PATH}: the one socket PATH, compared exactly
    (C{unix//run/docker.sock}).

Targets: an IP address in any spelling a resolver would accept
(C{0177.0.0.1}, C{2130706433}, C{0x7f.1}, C{127.0.0.1.},
C{[::ffff:127.0.0.1]}, C{[0:0:0:0:0:0:0:1]}) is turned into its one
standard form, by the reading the server's own-listener rule shares
(L{remotedialer.protocol._addresses.canonical_address}), and only
address rules can allow it.  Anything else must be a valid host name (ASCII
letters, digits, C{-} and C{_} in dot-separated labels, the last not all
digits) or the target is refused.  The unspecified addresses C{0.0.0.0} and
C{::} (which reach this host) are never allowed.

A host name target is allowed when every address it resolves to is allowed
(L{DialACL.address_refusal}), where an address is allowed by an address
rule, or by a host name rule naming the target (proto and port matching).
A host name rule trusts that name's DNS, but never for loopback, link-local
(the cloud metadata address 169.254.169.254), multicast or broadcast
addresses, which a CNAME or a rebinding DNS server could point the name at:
those need an address rule (C{tcp/127.0.0.1:8080}).  Names C{localhost} and
C{*.localhost} are the exception for loopback addresses (RFC 6761).

This module is decisions only; L{remotedialer.client._dialer.ACLDialer} resolves
names and dials exactly the address that was checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import attr

from remotedialer.protocol._addresses import IPAddress, canonical_address, plain_name, split_host_port

__all__ = ["TCP_PROTOS", "DialACL", "DialRule", "IPAddress", "IPNetwork", "canonical_address",
           "canonical_host", "canonical_name", "parse_rule"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The address families (4, 6) each proto dials to; C{*} is C{tcp}.
_FAMILIES = {"tcp": frozenset({4, 6}), "*": frozenset({4, 6}),
             "tcp4": frozenset({4}), "tcp6": frozenset({6})}
TCP_PROTOS = ("tcp", "tcp4", "tcp6")

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def canonical_name(host: str) -> str:
    """
    C{host} as a host name compared by rules: lower case, without a
    trailing dot; ValueError if it is not a valid host name (see the
    module docstring).
    """
    if not host.isascii():
        raise ValueError(f"{host!r} is not an ASCII host name (use its xn-- form)")
    name = plain_name(host)
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a valid host name")
    if labels[-1].isdigit():
        raise ValueError(f"{host!r} is neither an IP address nor a valid host name")
    return name


def canonical_host(host: str) -> IPAddress | str:
    """The canonical address, or else the canonical name, of C{host}; ValueError if neither."""
    ip = canonical_address(host)
    return ip if ip is not None else canonical_name(host)


def _network(text: str) -> IPNetwork:
    try:
        net: IPNetwork = ipaddress.ip_network(text)
    except ValueError as e:
        if "host bits set" in str(e):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set: did you mean {loose}?") from None
        raise ValueError(f"{text!r} is not an IP address or CIDR range") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        net = ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    if net.num_addresses == 1 and net.network_address.is_unspecified:
        raise ValueError(f"{net.network_address} is never dialed (it reaches this host: write 127.0.0.1)")
    return net


def _host_part(host: str) -> tuple[IPNetwork | None, str | None, bool]:
    """(network, None, False), or (None, name, wildcard) for the host of a rule."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{host!r} lacks its closing ']'")
        inner = host[1:-1]
        if "%" in inner:
            raise ValueError(f"{host!r}: IPv6 zones are not supported")
        if "." in inner and ":" not in inner:
            raise ValueError(f"{host!r}: brackets are for IPv6 only (write {inner})")
        return _network(inner), None, False
    if ":" in host:
        raise ValueError(f"IPv6 addresses need brackets, as in tcp/[{host}]:443")
    if "*" in host or "?" in host or "[" in host or "]" in host:
        if host == "*":
            raise ValueError(
                "'*' is not a host: allow address ranges (0.0.0.0/0, [::/0]) or name host names")
        if host.startswith("*.") and not any(c in host[2:] for c in "*?[]"):
            suffix = host[2:]
            if canonical_address(suffix) is not None:
                raise ValueError(f"{host!r}: '*.' takes a host name, not an address")
            return None, canonical_name(suffix), True
        if all(c in "0123456789.*" for c in host):
            raise ValueError(f"{host!r}: glob patterns are gone, use a CIDR range such as 10.0.0.0/24")
        raise ValueError(f"{host!r}: glob patterns are gone, '*' may only be a whole first label "
                         "(*.example.com)")
    if "/" in host:
        return _network(host), None, False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        legacy = canonical_address(host)
        if legacy is not None:
            raise ValueError(f"{host!r} is a non-standard spelling of {legacy}: write {legacy}") from None
        return None, canonical_name(host), False
    return _network(host), None, False


def _ports(text: str) -> tuple[tuple[int, int], ...] | None:
    if text == "*":
        return None
    ranges = []
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not _PORT.fullmatch(low) or (dash and not _PORT.fullmatch(high)):
            raise ValueError(f"bad port {part!r} (a number, a list 80,443, a range 8000-8100, or *)")
        first, last = int(low), int(high) if dash else int(low)
        if not 0 < first <= 65535 or not 0 < last <= 65535:
            raise ValueError(f"port {part!r} is out of range 1-65535")
        if first > last:
            raise ValueError(f"port range {part!r} is backwards")
        ranges.append((first, last))
    return tuple(ranges)


@attr.frozen
class DialRule:
    """One parsed rule (L{parse_rule}); C{text} is what it was parsed from."""

    text: str
    proto: str
    #: None: any port; else inclusive (first, last) ranges.
    ports: tuple[tuple[int, int], ...] | None = None
    network: IPNetwork | None = None
    #: A host name; with C{wildcard}, the suffix after C{*.}.
    name: str | None = None
    wildcard: bool = False
    #: The socket path of a C{unix} rule.
    path: str | None = None

    def __str__(self) -> str:
        return self.text

    def allows_port(self, port: int) -> bool:
        return self.ports is None or any(first <= port <= last for first, last in self.ports)

    def allows_address(self, ip: IPAddress, port: int) -> bool:
        """An address rule allowing C{ip} (canonical) on C{port}."""
        return (self.network is not None and self.allows_port(port)
                and ip.version == self.network.version
                and _without_zone(ip) in self.network)

    def names(self, name: str, port: int) -> bool:
        """A host name rule naming C{name} (canonical) on C{port}."""
        if self.name is None or not self.allows_port(port):
            return False
        if self.wildcard:
            return name.endswith("." + self.name)
        return name == self.name

    def families(self) -> frozenset[int]:
        return _FAMILIES.get(self.proto, frozenset())


def _without_zone(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(ip.packed)
    return ip


def parse_rule(text: str) -> DialRule:
    """The L{DialRule} C{text} spells; ValueError with a one-line reason if none."""
    proto, sep, rest = text.partition("/")
    if not sep:
        raise ValueError("not proto/host:port (e.g. tcp/10.0.0.0/8:443)")
    if proto == "unix":
        if not rest:
            raise ValueError("unix/ needs a socket path, e.g. unix//run/app.sock")
        return DialRule(text, proto, path=rest)
    if proto not in _FAMILIES:
        raise ValueError(f"unknown proto {proto!r} (tcp, tcp4, tcp6, unix or *)")
    if rest.startswith("["):
        close = rest.find("]") + 1
        host, port = (rest[:close], rest[close + 1:]) if close else (rest, "")
        if close and rest[close:close + 1] != ":":
            raise ValueError(f"{rest!r} is not [IPv6]:port (brackets are for IPv6 addresses, "
                             "not glob classes; ':*' for any port)")
    else:
        host, sep, port = rest.rpartition(":")
        if not sep or not host or host.endswith(":"):
            raise ValueError(f"{rest!r} is not host:port (':*' for any port)")
    network, name, wildcard = _host_part(host)
    ports = _ports(port)
    if network is not None and network.version not in _FAMILIES[proto]:
        raise ValueError(f"{proto} rule for an IPv{network.version} address")
    return DialRule(text, "tcp" if proto == "*" else proto, ports, network, name, wildcard)


def _special(ip: IPAddress) -> str | None:
    """Why a host name rule does not cover C{ip}, if it does not."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and (ip == _BROADCAST or ip in _THIS_NETWORK):
        return "a broadcast address" if ip == _BROADCAST else "a 'this network' address"
    return None


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


class DialACL:
    """
    An allow-list of L{DialRule}s (or their texts), denying whatever no rule
    allows.  Called as C{acl(proto, address)} it is a connect-authorizer that
    decides from the text alone (a host name is allowed only by a host name
    rule); L{LocalDialer} given one resolves names and checks every address
    instead (L{remotedialer.client._dialer.ACLDialer}).
    """

    def __init__(self, rules: Iterable[DialRule | str]) -> None:
        self.rules = tuple(r if isinstance(r, DialRule) else parse_rule(r) for r in rules)

    def __repr__(self) -> str:
        return f"DialACL({[r.text for r in self.rules]!r})"

    def __call__(self, proto: str, address: str) -> bool:
        if proto == "unix":
            return self.match(proto, address, 0)
        try:
            host, port = split_host_port(address)
        except ValueError:
            return False
        return self.match(proto, host, port)

    def match(self, proto: str, host: str, port: int) -> bool:
        """
        Whether a rule allows C{proto} to C{host} (an address in any
        spelling, or a host name) on C{port}: for a host name, whether a
        host name rule names it (its addresses are not looked at).  For
        C{unix}, C{host} is the path and C{port} is ignored.
        """
        if proto == "unix":
            return any(r.path == host for r in self.rules)
        if proto not in TCP_PROTOS:
            return False
        try:
            target = canonical_host(host)
        except ValueError:
            return False
        if isinstance(target, str):
            return bool(self.name_rules(proto, target, port))
        if isinstance(target, ipaddress.IPv6Address) and target.scope_id:
            return False
        return self.address_refusal(proto, target, port) is None

    def name_rules(self, proto: str, name: str, port: int) -> list[DialRule]:
        """The host name rules naming C{name} (canonical) for C{proto} on C{port}."""
        families = _FAMILIES.get(proto, frozenset())
        return [r for r in self.rules if r.families() & families and r.names(name, port)]

    def may_allow_addresses(self, proto: str, port: int) -> bool:
        """Whether any address rule could allow C{proto} on C{port} (else no need to resolve)."""
        families = _FAMILIES.get(proto, frozenset())
        return any(r.network is not None and r.network.version in families and r.allows_port(port)
                   for r in self.rules)

    def address_refusal(
        self, proto: str, ip: IPAddress, port: int, name: str | None = None,
        name_rules: Iterable[DialRule] = (),
    ) -> str | None:
        """
        None if C{proto} may dial C{ip} (canonical) on C{port}, else why not
        (one line).  C{name_rules} are the host name rules naming C{name},
        the target C{ip} was resolved from.
        """
        if ip.version not in _FAMILIES.get(proto, frozenset()):
            return f"{proto} cannot dial an IPv{ip.version} address"
        if ip.is_unspecified:
            return f"{ip} is never dialed (it reaches this host)"
        if any(r.allows_address(ip, port) for r in self.rules):
            return None
        covering = [r for r in name_rules if ip.version in r.families()]
        if covering and name is not None:
            special = _special(_without_zone(ip))
            if special is None or (special == "a loopback address" and _is_localhost(name)):
                return None
            return f"{name} resolves to {ip}, {special}, which a host name rule does not cover"
        if name is not None:
            return f"{name} resolves to {ip}, which no rule allows on port {port}"
        return f"no rule allows {ip} on port {port}"
