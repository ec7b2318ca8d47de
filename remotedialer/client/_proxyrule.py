"""
Which HTTP proxy, if any, a tunnel URL is dialed through.

By default the rule is Go's C{http.ProxyFromEnvironment}
(golang.org/x/net/http/httpproxy), which Go's remotedialer client gives its
gorilla/websocket dialer -- so an agent that works behind a proxy in Go
works here unchanged:

  - C{HTTPS_PROXY} for C{wss://} URLs, C{HTTP_PROXY} for C{ws://} (gorilla
    looks the proxy up for the URL as C{https://} or C{http://}).  Each is
    read upper case first, then lower case, and an empty value counts as
    unset (Go's C{getEnvAny}): C{HTTPS_PROXY} wins over C{https_proxy}.
    (curl reads the lower-case names first, and C{http_proxy} only in
    lower case; Go, and so we, read both.)
  - A value without a scheme is an C{http://} proxy (C{proxy.corp:3128});
    without a port, port 80 (Go's default; curl's is 1080).
    C{user:password@} in it (percent-decoded) is sent to the proxy as
    C{Proxy-Authorization: Basic}.  C{https://} (TLS to the proxy itself)
    and SOCKS proxies, which Go also takes, are refused with a one-line
    error rather than used wrongly.
  - C{NO_PROXY}: comma-separated entries; C{*} (no proxy at all); an IP
    address or CIDR range (C{10.1.2.3}, C{10.0.0.0/8}, C{::1},
    C{fd00::/8}); a domain, which matches itself and every name under it
    (C{example.com}), or with a leading C{.} or C{*.} only the names under
    it (C{.example.com}); an address or domain with C{:port}
    (C{[::1]:8443}, C{example.com:443}) matches that port only.  Case and
    spaces do not matter; an entry that reads as none of these is skipped
    (Go's best effort).  The URL's port is its own or the scheme's (80,
    443).
  - C{localhost} and loopback addresses never go through a proxy taken
    from the environment.

An explicit proxy (the client program's C{--proxy URL}, C{proxy=} of
L{TunnelClient}) replaces C{HTTPS_PROXY}/C{HTTP_PROXY} for every URL; hosts
that C{NO_PROXY} names still go direct, and nothing else does (loopback
included: the proxy was asked for by name).  C{--proxy ''} dials direct,
whatever the environment says.

Pure decisions: nothing here touches the network.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import attrs

__all__ = ["NoProxy", "ProxyRule", "ProxyURL", "parse_proxy_url", "proxy_rule"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The environment variables, in the order Go reads them (the first non-empty one wins).
HTTP_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy")
HTTPS_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")

_DEFAULT_PORTS = {"ws": "80", "wss": "443"}


def _ip(text: str, zone: bool = False) -> IPAddress | None:
    """
    C{text} as an IP address, IPv4-mapped ones as IPv4: as Go's
    C{net.ParseIP} reads a C{NO_PROXY} entry (no zone), or with C{zone} as
    its C{netip.ParseAddr} reads a URL's host (a zone allowed, and left out).
    """
    if "%" in text:
        if not zone:
            return None
        text, _, scope = text.partition("%")
        if not scope:
            return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


def _ascii(name: str) -> str:
    """An international domain name in its ASCII (punycode) form, as Go compares them."""
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort, for NO_PROXY entries: (host, port) or None (no port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            return None
        host, port = text[1:end], text[end + 2:]
        return (host, port) if "[" not in port and "]" not in port else None
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host or "[" in text or "]" in text:
        return None
    return host, port


@attrs.frozen
class NoProxy:
    """
    A parsed C{NO_PROXY} value (see the module docstring): which hosts go
    direct.  L{matches} is Go's C{useProxy} without its loopback rule,
    which is L{ProxyRule}'s.
    """

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    addresses: tuple[tuple[IPAddress, str], ...] = ()
    #: (suffix with its leading dot, port or "", the bare name matches too)
    domains: tuple[tuple[str, str, bool], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        networks: list[IPNetwork] = []
        addresses: list[tuple[IPAddress, str]] = []
        domains: list[tuple[str, str, bool]] = []
        for entry in text.split(","):
            entry = entry.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            address, slash, length = entry.partition("/")
            if slash:
                network = None
                if length.isdigit() and _ip(address) is not None:
                    try:
                        network = ipaddress.ip_network(entry, strict=False)
                    except ValueError:
                        pass
                if network is not None:
                    networks.append(network)
                continue  # (Go: a "/" that is no CIDR range leaves a host no URL has)
            split = _split_host_port(entry)
            host, port = split if split is not None else (entry, "")
            if not host:
                continue
            ip = _ip(host)
            if ip is not None:
                addresses.append((ip, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            bare = not host.startswith(".")
            domains.append(("." + _ascii(host if bare else host[1:]), port, bare))
        return cls(networks=tuple(networks), addresses=tuple(addresses), domains=tuple(domains))

    def matches(self, host: str, port: str) -> bool:
        """C{host} (lower case, no brackets) at C{port} goes direct."""
        if self.everything:
            return True
        ip = _ip(host, zone=True)
        if ip is not None:
            return any(ip in network for network in self.networks) or any(
                ip == address and (not want or want == port) for address, want in self.addresses)
        for suffix, want, bare in self.domains:
            if host.endswith(suffix) or (bare and host == suffix[1:]):
                if not want or want == port:
                    return True
        return False


def _without_credentials(text: str) -> str:
    """A proxy URL as it may be shown: any C{user:password@} left out."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)?[^/@]*@", r"\1", text)


@attrs.frozen
class ProxyURL:
    """An HTTP proxy: where it is, the credentials it gets, and where its URL came from."""

    host: str
    port: int
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: Where the URL was read: C{HTTPS_PROXY}, C{--proxy}... (for messages).
    source: str = attrs.field(default="", eq=False)

    @property
    def address(self) -> str:
        """C{host:port} (C{[v6]:port})."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def authorization(self) -> str | None:
        """The C{Proxy-Authorization} value for the URL's user and password, if it has a user."""
        if self.username is None:
            return None
        credentials = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(credentials).decode("ascii")

    def __str__(self) -> str:
        """The URL without its credentials (for logs)."""
        return f"http://{self.address}"


def parse_proxy_url(text: str, source: str = "proxy") -> ProxyURL:
    """
    A proxy URL as Go reads one: C{http://[user:password@]host[:port]}, the
    scheme optional.  ValueError (one line, naming C{source}, never the
    password) for anything else.
    """
    shown = f"{source} {_without_credentials(text.strip())!r}"
    text = text.strip()
    scheme, sep, _ = text.partition("://")
    if not sep:
        text, scheme = "http://" + text, "http"
    scheme = scheme.lower()
    if scheme == "https":
        raise ValueError(
            f"{shown}: https:// proxies (TLS to the proxy) are not supported; give the proxy's "
            "http:// URL (TLS to the server still runs end to end through it)")
    if scheme.startswith("socks"):
        raise ValueError(f"{shown}: SOCKS proxies are not supported; give an HTTP (CONNECT) proxy's URL")
    if scheme != "http":
        raise ValueError(f"{shown}: not an http:// proxy URL")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{shown}: {e}") from None
    if not host:
        raise ValueError(f"{shown}: no host")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(host, port or 80, username, password, source)


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str]:
    """The first of C{names} set to a non-empty value: (name, value), or ("", "")."""
    for name in names:
        value = environ.get(name, "")
        if value:
            return name, value
    return "", ""


@attrs.frozen
class ProxyRule:
    """
    The proxy each tunnel URL is dialed through (see the module docstring):
    C{http} for C{ws://} URLs, C{https} for C{wss://}, unless C{no_proxy}
    names the host -- or, with C{loopback_direct}, it is C{localhost} or a
    loopback address.  C{ProxyRule()} dials everything direct.
    """

    http: ProxyURL | None = None
    https: ProxyURL | None = None
    no_proxy: NoProxy = NoProxy()
    loopback_direct: bool = True

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ProxyRule:
        """
        Go's rule from C{environ} (default: the process environment).
        ValueError for a proxy variable that is set to something unusable.
        """
        environ = os.environ if environ is None else environ
        proxies = []
        for names in (HTTP_PROXY_VARIABLES, HTTPS_PROXY_VARIABLES):
            name, value = _first(environ, names)
            proxies.append(parse_proxy_url(value, name) if value else None)
        return cls(proxies[0], proxies[1], NoProxy.parse(_first(environ, NO_PROXY_VARIABLES)[1]))

    @classmethod
    def fixed(cls, url: str, no_proxy: str = "", source: str = "proxy") -> ProxyRule:
        """Every URL through the proxy at C{url}, except the hosts C{no_proxy} names."""
        proxy = parse_proxy_url(url, source)
        return cls(proxy, proxy, NoProxy.parse(no_proxy), loopback_direct=False)

    def proxy_for(self, url: str) -> ProxyURL | None:
        """The proxy to dial C{url} (C{ws://} or C{wss://}) through, or None: direct."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "wss" else self.http if parts.scheme == "ws" else None
        if proxy is None:
            return None
        host = _ascii(unquote(parts.hostname or "").strip())
        try:
            port = str(parts.port) if parts.port is not None else _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return proxy  # (endpoint_for_url refuses the URL)
        if self.loopback_direct:
            ip = _ip(host, zone=True)
            if host == "localhost" or (ip is not None and ip.is_loopback):
                return None
        if self.no_proxy.matches(host, port):
            return None
        return proxy


def proxy_rule(proxy: str | ProxyRule | None, environ: Mapping[str, str] | None = None,
               source: str = "proxy") -> ProxyRule:
    """
    The rule for a C{proxy} setting: None, the environment's (Go's rule);
    C{""}, none (every URL direct); a URL, that proxy for every URL but the
    hosts C{NO_PROXY} names; a L{ProxyRule}, itself.  ValueError (naming
    C{source} or the variable) for an unusable proxy URL.
    """
    if isinstance(proxy, ProxyRule):
        return proxy
    if proxy is None:
        return ProxyRule.from_environment(environ)
    if not proxy.strip():
        return ProxyRule()
    environ = os.environ if environ is None else environ
    return ProxyRule.fixed(proxy, _first(environ, NO_PROXY_VARIABLES)[1], source)
