"""
Which proxy a tunnel URL goes through: the environment read as Go's
golang.org/x/net/http/httpproxy reads it (its own test table is
TestUseProxy below), an explicit proxy, and the errors for proxy URLs we
cannot use.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.client._proxyrule import NoProxy, ProxyRule, ProxyURL, parse_proxy_url, proxy_rule


def proxy_for(environ: dict[str, str], url: str) -> str | None:
    found = ProxyRule.from_environment(environ).proxy_for(url)
    return None if found is None else f"{found}"


class EnvironmentTests(SynchronousTestCase):
    def test_scheme_picks_the_variable(self) -> None:
        """wss:// takes HTTPS_PROXY, ws:// takes HTTP_PROXY, and neither falls back to the other."""
        both = {"HTTP_PROXY": "http.proxy.tld:3128", "HTTPS_PROXY": "secure.proxy.tld:3128"}
        self.assertEqual(proxy_for(both, "ws://server.example/connect"), "http://http.proxy.tld:3128")
        self.assertEqual(proxy_for(both, "wss://server.example/connect"), "http://secure.proxy.tld:3128")
        self.assertIsNone(proxy_for({"HTTP_PROXY": "p:1"}, "wss://server.example/connect"))
        self.assertIsNone(proxy_for({"HTTPS_PROXY": "p:1"}, "ws://server.example/connect"))
        self.assertIsNone(proxy_for({}, "wss://server.example/connect"))

    def test_upper_case_read_first_as_go_does(self) -> None:
        """
        Go's getEnvAny("HTTPS_PROXY", "https_proxy"): the upper-case name
        wins; an empty value is unset; lower case alone works (both names).
        """
        url = "wss://server.example/connect"
        self.assertEqual(proxy_for({"HTTPS_PROXY": "upper:1", "https_proxy": "lower:2"}, url), "http://upper:1")
        self.assertEqual(proxy_for({"HTTPS_PROXY": "", "https_proxy": "lower:2"}, url), "http://lower:2")
        self.assertEqual(proxy_for({"https_proxy": "lower:2"}, url), "http://lower:2")
        self.assertEqual(proxy_for({"http_proxy": "lower:2"}, "ws://server.example/c"), "http://lower:2")
        direct = {"HTTPS_PROXY": "p:1", "NO_PROXY": "", "no_proxy": "server.example"}
        self.assertIsNone(proxy_for(direct, url))
        upper_wins = {"HTTPS_PROXY": "p:1", "NO_PROXY": "other.example", "no_proxy": "server.example"}
        self.assertEqual(proxy_for(upper_wins, url), "http://p:1")

    def test_without_scheme_is_http(self) -> None:
        for value, address in [
            ("proxy.corp:3128", "proxy.corp:3128"),
            ("proxy.corp", "proxy.corp:80"),  # Go's default port for an http proxy
            ("localhost", "localhost:80"),  # (a single label url.Parse takes for a scheme)
            ("10.0.0.1:8080", "10.0.0.1:8080"),
            ("[fd00::1]:3128", "[fd00::1]:3128"),
            ("HTTP://Proxy.Corp:3128/ignored/path", "proxy.corp:3128"),
        ]:
            proxy = parse_proxy_url(value, "HTTPS_PROXY")
            self.assertEqual(proxy.address, address, value)
            self.assertEqual(proxy.source, "HTTPS_PROXY")

    def test_credentials_become_basic(self) -> None:
        proxy = parse_proxy_url("http://agent%40corp:p%3Ass%20w@proxy:3128")
        self.assertEqual((proxy.username, proxy.password), ("agent@corp", "p:ss w"))
        self.assertEqual(proxy.authorization, "Basic YWdlbnRAY29ycDpwOnNzIHc=")
        self.assertEqual(parse_proxy_url("agent:s3cret@proxy:3128").authorization, "Basic YWdlbnQ6czNjcmV0")
        self.assertEqual(parse_proxy_url("agent@proxy").authorization, "Basic YWdlbnQ6")
        self.assertIsNone(parse_proxy_url("proxy:3128").authorization)
        # Never shown: not in str(), repr(), or the URL the log names.
        shown = f"{proxy} {proxy!r}"
        self.assertNotIn("p:ss", shown)
        self.assertEqual(str(proxy), "http://proxy:3128")

    def test_unusable_values_are_one_line_errors(self) -> None:
        """https:// and SOCKS proxies (Go takes them), garbage: one line naming the variable, no password."""
        for value, expected in [
            ("https://agent:s3cret@proxy:3128", "https:// proxies (TLS to the proxy) are not supported"),
            ("socks5://agent:s3cret@proxy:1080", "SOCKS proxies are not supported"),
            ("socks5h://proxy:1080", "SOCKS proxies are not supported"),
            ("ftp://proxy", "not an http:// proxy URL"),
            ("http://agent:s3cret@[::1", "HTTPS_PROXY"),
            ("http://agent:s3cret@:3128", "no host"),
            ("http://proxy:99999", "HTTPS_PROXY"),
        ]:
            with self.assertRaises(ValueError) as caught:
                ProxyRule.from_environment({"HTTPS_PROXY": value})
            message = str(caught.exception)
            self.assertIn(expected, message)
            self.assertTrue(message.startswith("HTTPS_PROXY '"), message)
            self.assertNotIn("s3cret", message)
            self.assertNotIn("\n", message)

    def test_loopback_direct_from_the_environment_only(self) -> None:
        """
        Go never proxies localhost or a loopback address it found in the
        environment; an explicit proxy is used for them (only NO_PROXY exempts).
        """
        env = {"HTTP_PROXY": "p:1", "HTTPS_PROXY": "p:1"}
        for url in ["ws://localhost:8123/connect", "wss://127.0.0.1/c", "wss://127.9.9.9/c", "ws://[::1]:80/c",
                    "ws://[::ffff:127.0.0.1]/c"]:
            self.assertIsNone(proxy_for(env, url), url)
        self.assertEqual(proxy_for(env, "ws://[::2]/c"), "http://p:1")
        self.assertEqual(proxy_for(env, "ws://localhost.example/c"), "http://p:1")
        fixed = ProxyRule.fixed("p:1")
        self.assertEqual(str(fixed.proxy_for("ws://127.0.0.1:8123/connect")), "http://p:1")
        self.assertEqual(str(fixed.proxy_for("wss://localhost/connect")), "http://p:1")
        self.assertIsNone(ProxyRule.fixed("p:1", "127.0.0.1").proxy_for("ws://127.0.0.1:8123/connect"))

    def test_settings(self) -> None:
        """proxy_rule: None is the environment, "" direct, a URL that proxy (NO_PROXY kept), a rule itself."""
        env = {"HTTPS_PROXY": "env.proxy:1", "NO_PROXY": ".internal"}
        url = "wss://server.example/connect"
        self.assertEqual(str(proxy_rule(None, env).proxy_for(url)), "http://env.proxy:1")
        self.assertIsNone(proxy_rule("", env).proxy_for(url))
        self.assertIsNone(proxy_rule("", {"HTTPS_PROXY": "https://bad"}).proxy_for(url))
        flag = proxy_rule("http://flag.proxy:2", env, source="--proxy")
        self.assertEqual(str(flag.proxy_for(url)), "http://flag.proxy:2")
        self.assertEqual(flag.https.source, "--proxy")
        self.assertEqual(str(flag.proxy_for("ws://server.example/connect")), "http://flag.proxy:2")
        self.assertIsNone(flag.proxy_for("wss://a.internal/connect"))
        rule = ProxyRule()
        self.assertIs(proxy_rule(rule, env), rule)
        with self.assertRaises(ValueError) as caught:
            proxy_rule("https://flag.proxy", env, source="--proxy")
        self.assertTrue(str(caught.exception).startswith("--proxy 'https://flag.proxy': "))


#: golang.org/x/net/http/httpproxy's TestUseProxy: its NO_PROXY, and each
#: host (at port 80) with whether it goes through the proxy.
GO_NO_PROXY = ("foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, 192.168.1.3:80, "
               "10.0.0.0/30, 2001:db8::52:0:1, [2001:db8::52:0:2]:443, [2001:db8::52:0:3]:80, "
               "2002:db8:a::45/64")
GO_USE_PROXY = [
    ("localhost", False), ("127.0.0.1", False), ("127.0.0.2", False), ("[::1]", False), ("[::2]", True),
    ("192.168.1.1", False), ("192.168.1.2", True), ("192.168.1.3", False), ("192.168.1.4", True),
    ("10.0.0.2", False), ("[2001:db8::52:0:1]", False), ("[2001:db8::52:0:2]", True),
    ("[2001:db8::52:0:3]", False), ("[2002:db8:a::123]", False), ("[fe80::424b:c8be:1643:a1b6]", True),
    ("barbaz.net", True), ("www.barbaz.net", False), ("foobar.com", False), ("www.foobar.com", False),
    ("foofoobar.com", True), ("baz.com", True), ("localhost.net", True), ("local.localhost", True),
    ("barbarbaz.net", True), ("wildcard.io", True), ("nested.wildcard.io", False), ("awildcard.io", True),
]


class NoProxyTests(SynchronousTestCase):
    def test_go_use_proxy_table(self) -> None:
        rule = ProxyRule.from_environment({"HTTP_PROXY": "proxy:3128", "NO_PROXY": GO_NO_PROXY})
        for host, proxied in GO_USE_PROXY:
            self.assertEqual(rule.proxy_for(f"ws://{host}:80/connect") is not None, proxied, host)
        everything = ProxyRule.from_environment({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "*"})
        for host, _ in GO_USE_PROXY:
            self.assertIsNone(everything.proxy_for(f"ws://{host}:80/connect"), host)

    def test_more_cases(self) -> None:
        rule = ProxyRule.fixed("proxy:3128", " Example.COM:443 , .Corp.Internal,10.1.0.0/16,fd00::/16 ,"
                                             "[fd01::5]:8443, :1, ,*.idn.example, .示例.com, [::1],"
                                             "1.2.3.4/x")
        cases = [
            ("wss://example.com/c", False),  # port 443 is wss's own
            ("wss://example.com:443/c", False),
            ("ws://example.com/c", True),  # port 80: the entry wants 443
            ("wss://www.example.com/c", False),
            ("wss://corp.internal/c", True),  # a leading dot: names under it only
            ("wss://a.b.corp.internal/c", False),
            ("wss://10.1.255.3/c", False),
            ("wss://[::ffff:10.1.2.3]/c", False),  # IPv4-mapped is the IPv4 address (as in Go)
            ("wss://10.2.0.1/c", True),
            ("wss://[fd00:12::1]/c", False),
            ("wss://[fd12::1]/c", True),
            ("wss://[fd01::5]:8443/c", False),
            ("wss://[fd01::5]/c", True),
            ("wss://[fe80::1%25eth0]/c", True),  # a zone is no match for anything
            ("wss://x.idn.example/c", False),
            ("wss://idn.example/c", True),
            ("wss://www.示例.com/c", False),
            ("wss://www.xn--fsq092h.com/c", False),
            ("wss://[::1]/c", True),  # "[::1]" without a port is no entry Go reads (nor we)
            ("wss://127.0.0.1/c", True),  # (explicit proxy: loopback is proxied)
        ]
        for url, proxied in cases:
            self.assertEqual(rule.proxy_for(url) is not None, proxied, url)

    @given(st.lists(st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4),
           st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True), st.sampled_from(["", ".", "*."]),
           st.booleans())
    def test_domain_entries(self, labels: list[str], sub: str, prefix: str, upper: bool) -> None:
        """
        "name" matches the name and every name under it; ".name" and "*.name"
        only the names under it; never a name that merely ends with the same
        characters; case does not matter, on either side.
        """
        name = ".".join(labels)
        entry = prefix + (name.upper() if upper else name)
        rule = ProxyRule.fixed("proxy:3128", f"other.example, {entry}")
        host_url = "wss://{}:443/connect"
        self.assertEqual(rule.proxy_for(host_url.format(name)) is None, prefix == "")
        self.assertIsNone(rule.proxy_for(host_url.format(f"{sub}.{name}".upper())))
        self.assertIsNotNone(rule.proxy_for(host_url.format(f"{sub}{name}")))

    @given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32), st.ip_addresses(v=4))
    def test_cidr_entries(self, base, length: int, host) -> None:
        """An address goes direct exactly when it is in the range, in its IPv4 or IPv4-mapped form."""
        network = ipaddress.ip_network(f"{base}/{length}", strict=False)
        rule = ProxyRule.fixed("proxy:3128", f"{base}/{length}")
        inside = host in network
        self.assertEqual(rule.proxy_for(f"wss://{host}/c") is None, inside)
        self.assertEqual(rule.proxy_for(f"wss://[::ffff:{host}]/c") is None, inside)

    @given(st.ip_addresses(), st.integers(min_value=1, max_value=65535),
           st.integers(min_value=1, max_value=65535))
    def test_address_entries_with_ports(self, ip, entry_port: int, url_port: int) -> None:
        """An address entry with a port matches that port only; without one, every port."""
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        url = f"wss://{literal}:{url_port}/c"
        self.assertEqual(ProxyRule.fixed("p:1", f"{literal}:{entry_port}").proxy_for(url) is None,
                         entry_port == url_port)
        self.assertIsNone(ProxyRule.fixed("p:1", str(ip)).proxy_for(url))

    @given(st.text(max_size=40))
    def test_any_value_parses(self, text: str) -> None:
        """Go's best effort: whatever NO_PROXY holds, it is read, never an error."""
        no_proxy = NoProxy.parse(text)
        no_proxy.matches("server.example", "443")
        no_proxy.matches("10.0.0.1", "443")


class ProxyURLTests(SynchronousTestCase):
    def test_ipv6_address(self) -> None:
        self.assertEqual(ProxyURL("fd00::1", 3128).address, "[fd00::1]:3128")
        self.assertEqual(str(ProxyURL("fd00::1", 3128, "u", "p")), "http://[fd00::1]:3128")
