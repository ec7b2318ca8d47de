"""
The twistd programs: option parsing, makeService under the real reactor, and
the real C{twistd -n remotedialer-server/-client} as subprocesses.

The subprocesses run this interpreter's twistd from a scratch directory, so
they exercise the installed package and its plugin (CI installs it with
C{pip install '.[test]'}).  From a checkout that is not installed, they are
pointed at the checkout through PYTHONPATH instead.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys

import treq
import twisted.plugins
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data, File
from zope.interface import implementer

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from remotedialer.frontdoor._tls import InsecureTLSPolicy
from remotedialer.server._auth import hash_token
from tests.support import eventually, listen_tcp, self_signed_certificate, wait
from tests.system.test_frontdoor import listen_tls, make_ca

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


#: The server program refuses to start without a client authentication
#: method; option tests not about authentication use Go's any-client mode.
_AUTH_FLAGS = ("--clients-file", "--client-ca-file", "--insecure-any-client")


def parse(options_class, argv, *, auth: bool = True):
    if options_class is server_tap.Options and auth and not any(a in _AUTH_FLAGS for a in argv):
        argv = ["--insecure-any-client", *argv]
    options = options_class()
    options.parseOptions(argv)
    return options



def assert_usage_error(testcase, argv, *fragments, options=None):
    """C{argv} is refused with a one-line usage error holding every fragment."""
    with testcase.assertRaises(usage.UsageError) as caught:
        parse(options or server_tap.Options, argv)
    message = str(caught.exception)
    testcase.assertNotIn("\n", message)
    for fragment in fragments:
        testcase.assertIn(fragment, message)

class ServerOptionsTests(TestCase):
    def test_defaults(self):
        options = parse(server_tap.Options, [])
        self.assertEqual(options["listen"], "tcp:8123:interface=127.0.0.1")
        self.assertIsNone(options["id"])
        self.assertIsNone(options["token"])
        self.assertEqual(options["peer_list"], [])
        self.assertFalse(options["debug"])

    def test_good_values(self):
        options = parse(server_tap.Options, [
            "--listen", "tcp:0:interface=127.0.0.1", "--id", "me", "--token", "t",
            "--peers", "a:t:ws://h:1/connect,b:t2:wss://h/connect", "-d",
        ])
        self.assertEqual(options["listen"], "tcp:0:interface=127.0.0.1")
        self.assertEqual((options["id"], options["token"]), ("me", "t"))
        self.assertEqual(options["peer_list"], [("a", "t", "ws://h:1/connect"), ("b", "t2", "wss://h/connect")])
        self.assertTrue(options["debug"])

    def _bad(self, argv, *fragments):
        assert_usage_error(self, argv, *fragments)

    def test_malformed_peers(self):
        for peers in ["a:t", "a:t:http://h/connect", ":t:ws://h/c", "a::ws://h/c", "a:t:ws://h/c,b"]:
            self._bad(["--id", "me", "--token", "x", "--peers", peers], "--peers")

    def test_bad_listen(self):
        self._bad(["--listen", "bogus:1"], "--listen 'bogus:1'")
        self._bad(["--listen", "tcp:notaport"], "--listen 'tcp:notaport'")

    def test_peers_need_id_and_token(self):
        self._bad(["--peers", "a:t:ws://h/connect"], "--peers needs --id and a peer token")
        self._bad(["--id", "me", "--peers", "a:t:ws://h/connect"], "--peers needs --id and a peer token")

    def test_target_tls_default(self):
        """By default the front door verifies https targets against the system trust store."""
        options = parse(server_tap.Options, [])
        self.assertIsInstance(options["target_tls_policy"], BrowserLikePolicyForHTTPS)
        self.assertFalse(options["target-insecure"])

    def test_target_ca_file(self):
        ca, _, _ = make_ca(self.mktemp())
        options = parse(server_tap.Options, ["--target-ca-file", ca])
        self.assertIsInstance(options["target_tls_policy"], BrowserLikePolicyForHTTPS)
        self.assertEqual(options["target-ca-file"], ca)

    def test_bad_target_ca_file(self):
        missing = os.path.join(self.mktemp(), "missing.pem")
        self._bad(["--target-ca-file", missing], "--target-ca-file", "missing.pem")
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        self._bad(["--target-ca-file", garbage], "--target-ca-file")

    def test_target_insecure(self):
        options = parse(server_tap.Options, ["--target-insecure"])
        self.assertIsInstance(options["target_tls_policy"], InsecureTLSPolicy)

    def test_target_ca_file_and_insecure_conflict(self):
        ca, _, _ = make_ca(self.mktemp())
        self._bad(["--target-ca-file", ca, "--target-insecure"], "--target-ca-file", "--target-insecure")


class ServerKeepaliveOptionsTests(TestCase):
    def test_idle_timeout_alone(self):
        """Without peers the server never pings: a short idle timeout needs no --ping-interval."""
        options = parse(server_tap.Options, ["--idle-timeout", "2"])
        self.assertEqual(server_tap.makeService(options).server.idle_timeout, 2.0)

    def test_defaults_and_values(self):
        options = parse(server_tap.Options, [])
        self.assertEqual((options["ping-interval"], options["idle-timeout"]), (5.0, 60.0))
        options = parse(server_tap.Options, ["--ping-interval", "3", "--idle-timeout", "45"])
        server = server_tap.makeService(options).server
        self.assertEqual((server.ping_interval, server.idle_timeout), (3.0, 45.0))

    def test_bad(self):
        peers = ["--id", "a", "--token", "t", "--peers", "b:t:ws://127.0.0.1:9/connect"]
        for argv in (["--ping-interval", "61", *peers], ["--idle-timeout", "0"], ["--ping-interval", "x"],
                     ["--ping-interval", "0"]):
            with self.assertRaises(usage.UsageError) as caught:
                parse(server_tap.Options, argv)
            self.assertNotIn("\n", str(caught.exception))


class ClientOptionsTests(TestCase):
    def test_defaults(self):
        options = parse(client_tap.Options, [])
        self.assertEqual(options["connect"], "ws://127.0.0.1:8123/connect")
        self.assertEqual(options["id"], "foo")
        self.assertEqual(options["headers"], {})
        self.assertEqual(options["allow"], [])
        self.assertIsNone(options["ca-file"])
        self.assertFalse(options["debug"])
        self.assertFalse(options["allow-any"])

    def test_good_values(self):
        options = parse(client_tap.Options, [
            "--connect", "ws://h:1/connect", "-i", "bar",
            "--header", "X-A: b", "--header", "X-B:c: d", "--allow", "tcp/127.0.0.1:*",
            "--allow", "tcp/10.0.0.0/24:443", "--debug",
        ])
        self.assertEqual(options["connect"], "ws://h:1/connect")
        self.assertEqual(options["id"], "bar")
        self.assertEqual(options["headers"], {"X-A": "b", "X-B": "c: d"})
        self.assertEqual(options["allow"], ["tcp/127.0.0.1:*", "tcp/10.0.0.0/24:443"])
        self.assertTrue(options["debug"])

    def test_ca_file(self):
        """A readable PEM file is accepted (MakeServiceTests.test_wss_with_ca_file uses it for real)."""
        directory = self.mktemp()
        os.makedirs(directory)
        cert, _key = self_signed_certificate(directory)
        options = parse(client_tap.Options, ["--connect", "wss://localhost:8443/connect", "--ca-file", cert])
        self.assertEqual(options["ca-file"], cert)

    def _bad(self, argv, *fragments):
        assert_usage_error(self, argv, *fragments, options=client_tap.Options)

    def test_bad_connect(self):
        self._bad(["--connect", "http://h/connect"], "--connect", "http://h/connect")
        self._bad(["--connect", "ws://h:notaport/connect"], "--connect")

    def test_bad_allow(self):
        self._bad(["--allow", "127.0.0.1:*"], "--allow '127.0.0.1:*'")
        self._bad(["--allow", "tcp/10.0.0.*:443"], "--allow 'tcp/10.0.0.*:443'", "10.0.0.0/24")
        self._bad(["--allow", "tcp/[::1]"], "--allow 'tcp/[::1]'", "[IPv6]:port")
        self._bad(["--allow", "tcp/10.0.0.1:0-80"], "--allow", "out of range")
        self._bad(["--allow", "*"], "--allow '*'", "--allow-any")
        self._bad(["--allow-any", "--allow", "tcp/127.0.0.1:*"], "--allow-any and --allow")

    def _service_logging(self, argv):
        """makeService's client for C{argv}, and the warnings it logged."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = client_tap.makeService(parse(client_tap.Options, argv))
        globalLogPublisher.removeObserver(events.append)
        warnings = [e.get("log_format", "") for e in events
                    if e.get("log_level") is not None and e["log_level"].name == "warn"]
        return service, warnings

    def test_no_allow_dials_nothing(self):
        """Deny by default: one clear line at start, and every dial refused."""
        service, warnings = self._service_logging([])
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("no --allow given: the server may dial nothing; add --allow tcp/HOST:PORT", warnings[0])
        for proto, address in [("tcp", "127.0.0.1:22"), ("tcp", "localhost:80"), ("unix", "/run/x")]:
            self.assertIsNone(self.successResultOf(service._dialer.endpoint_for(proto, address)))

    def test_allow_any(self):
        """--allow-any: Go's example client (everything), with a warning."""
        service, warnings = self._service_logging(["--allow-any"])
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("--allow-any: the server may dial any target", warnings[0])
        self.assertIsNotNone(self.successResultOf(service._dialer.endpoint_for("tcp", "10.9.9.9:1")))

    def test_allow_rules_reach_the_dialer(self):
        """--allow rules are parsed rules (not globs), canonical addresses checked and dialed."""
        service, warnings = self._service_logging(["--allow", "tcp/127.0.0.1:*",
                                                   "--allow", "tcp/10.0.0.0/24:443"])
        self.assertEqual(warnings, [])
        dialer = service._dialer
        endpoint = self.successResultOf(dialer.endpoint_for("tcp", "0177.0.0.1:22"))
        self.assertEqual((endpoint._host, endpoint._port), ("127.0.0.1", 22))
        self.successResultOf(dialer.endpoint_for("tcp", "10.0.0.7:443"))
        for address in ["10.0.1.1:443", "10.0.0.7:80", "127.0.0.2:22"]:
            failure = self.failureResultOf(dialer.endpoint_for("tcp", address), PermissionError)
            self.assertIn(f"connect to tcp/{address} not allowed", failure.getErrorMessage())

    def test_bad_header(self):
        self._bad(["--header", "X-No-Colon"], "--header 'X-No-Colon'")
        self._bad(["--header", ": value"], "--header ': value'")

    def test_bad_ca_file(self):
        missing = os.path.join(self.mktemp(), "missing.pem")
        self._bad(["--connect", "wss://h/connect", "--ca-file", missing], "--ca-file", "missing.pem")
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        self._bad(["--connect", "wss://h/connect", "--ca-file", garbage], "--ca-file")

    def test_bad_id(self):
        self._bad(["--id", ""], "--id")
        self._bad(["--id", "a/b"], "--id")

    def test_keepalive_options(self):
        """Go's 5 s / 60 s by default; both options reach the client service."""
        options = parse(client_tap.Options, [])
        self.assertEqual((options["ping-interval"], options["idle-timeout"]), (5.0, 60.0))
        options = parse(client_tap.Options, ["--ping-interval", "2.5", "--idle-timeout", "30"])
        service = client_tap.makeService(options)
        factory = service._factory
        self.assertEqual((factory.ping_interval, factory.idle_timeout), (2.5, 30.0))

    def test_bad_keepalive_options(self):
        self._bad(["--ping-interval", "60"], "--ping-interval", "under the idle timeout")
        self._bad(["--ping-interval", "0"], "--ping-interval")
        self._bad(["--idle-timeout", "-1"], "--idle-timeout")


def _listening_port(endpoint_service) -> defer.Deferred:
    """
    The port a StreamServerEndpointService listens on (C{tcp:0}), without
    taking it from the service's own Deferred, which its stopService needs.
    """
    d = defer.Deferred()

    def got(port):
        d.callback(port)
        return port

    endpoint_service._waitingForPort.addCallback(got)
    return d


async def start_server_program(testcase, argv):
    """makeService of remotedialer-server, started; (service, listening port number)."""
    top = server_tap.makeService(parse(server_tap.Options, argv))
    top.startService()
    testcase.addCleanup(lambda: top.stopService() if top.running else None)
    [listener] = [s for s in top if isinstance(s, StreamServerEndpointService)]
    port = await _listening_port(listener)
    return top, port.getHost().port


def start_client_program(testcase, argv):
    client = client_tap.makeService(parse(client_tap.Options, argv))
    client.startService()
    testcase.addCleanup(lambda: client.stopService() if client.running else None)
    return client


class MakeServiceTests(TestCase):
    timeout = 60

    def test_server_and_client_services(self):
        """
        The two programs' services start, the client connects, the front door
        fetches through it (and the --allow list is enforced), and both stop
        cleanly.
        """

        async def go():
            root = Resource()
            root.putChild(b"hello", Data(b"hello from the target", "text/plain"))
            target = await listen_tcp(Site(root), self)
            target_address = f"127.0.0.1:{target.getHost().port}"

            top, port = await start_server_program(self, ["--listen", "tcp:0:interface=127.0.0.1"])
            client = start_client_program(self, [
                "--connect", f"ws://127.0.0.1:{port}/connect", "--id", "bar",
                "--allow", f"tcp/{target_address}",
            ])
            await client.when_connected()
            await eventually(lambda: top.server.has_session("bar"))

            pool = HTTPConnectionPool(reactor, persistent=False)
            response = await treq.get(
                f"http://127.0.0.1:{port}/client/bar/http/{target_address}/hello", pool=pool)
            self.assertEqual((response.code, await response.content()), (200, b"hello from the target"))
            # Not allowed by the client's --allow: 502 with its reason.
            refused = await treq.get(f"http://127.0.0.1:{port}/client/bar/http/127.0.0.1:1/", pool=pool)
            await refused.content()
            self.assertEqual(refused.code, 502)
            # The server's own (tcp:0) listener: refused by the server first, 403.
            refused = await treq.get(f"http://127.0.0.1:{port}/client/bar/http/127.0.0.1:{port}/", pool=pool)
            self.assertEqual((refused.code, await refused.content()),
                             (403, b"front door: the target is this server's own listener\n"))

            await client.stopService()
            await eventually(lambda: not top.server.has_session("bar"))
            await top.stopService()

        return run(go())

    def test_wss_with_ca_file(self):
        """
        A server listening on ssl: with a self-signed certificate; a client
        given that certificate with --ca-file connects over wss:// and the
        front door works through it.
        """

        async def go():
            directory = self.mktemp()
            os.makedirs(directory)
            cert, key = self_signed_certificate(directory)
            root = Resource()
            root.putChild(b"hello", Data(b"hello over wss", "text/plain"))
            target = await listen_tcp(Site(root), self)
            target_address = f"127.0.0.1:{target.getHost().port}"
            top, port = await start_server_program(
                self, ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"])
            client = start_client_program(self, [
                "--connect", f"wss://localhost:{port}/connect", "--id", "secure", "--ca-file", cert,
                "--allow", f"tcp/{target_address}",
            ])
            await client.when_connected()
            await eventually(lambda: top.server.has_session("secure"))
            pool = HTTPConnectionPool(reactor, persistent=False)
            response = await treq.get(
                f"https://localhost:{port}/client/secure/http/{target_address}/hello", pool=pool,
                agent=Agent(reactor, pool=pool, contextFactory=_TrustOnly(cert)))
            self.assertEqual((response.code, await response.content()), (200, b"hello over wss"))
            await client.stopService()
            await eventually(lambda: not top.server.has_session("secure"))
            await top.stopService()

        return run(go())


    def test_https_target_with_target_ca_file(self):
        """--target-ca-file: the front door fetches from an https target that CA vouches for."""

        async def go():
            ca, leaf, key = make_ca(self.mktemp())
            root = Resource()
            root.putChild(b"hello", Data(b"hello over https", "text/plain"))
            target = await listen_tls(Site(root), self, leaf, key)
            target_address = f"127.0.0.1:{target.getHost().port}"
            top, port = await start_server_program(
                self, ["--listen", "tcp:0:interface=127.0.0.1", "--target-ca-file", ca])
            client = start_client_program(self, [
                "--connect", f"ws://127.0.0.1:{port}/connect", "--id", "tls",
                "--allow", f"tcp/{target_address}"])
            await client.when_connected()
            await eventually(lambda: top.server.has_session("tls"))
            pool = HTTPConnectionPool(reactor, persistent=False)
            response = await treq.get(
                f"http://127.0.0.1:{port}/client/tls/https/{target_address}/hello", pool=pool)
            self.assertEqual((response.code, await response.content()), (200, b"hello over https"))
            await client.stopService()
            await eventually(lambda: not top.server.has_session("tls"))
            await top.stopService()

        return run(go())

    def test_target_insecure_warns_and_fetches(self):
        """--target-insecure: a warning at start, and a self-signed https target is fetched."""

        async def go():
            events = []
            globalLogPublisher.addObserver(events.append)
            self.addCleanup(globalLogPublisher.removeObserver, events.append)
            directory = self.mktemp()
            os.makedirs(directory)
            cert, key = self_signed_certificate(directory)
            root = Resource()
            root.putChild(b"hello", Data(b"hello, self-signed", "text/plain"))
            target = await listen_tls(Site(root), self, cert, key)
            target_address = f"127.0.0.1:{target.getHost().port}"
            top, port = await start_server_program(
                self, ["--listen", "tcp:0:interface=127.0.0.1", "--target-insecure"])
            warnings = [e for e in events if e.get("log_level") is not None
                        and e["log_level"].name == "warn" and "--target-insecure" in e.get("log_format", "")]
            self.assertEqual(len(warnings), 1, events)
            client = start_client_program(self, [
                "--connect", f"ws://127.0.0.1:{port}/connect", "--id", "lax",
                "--allow", f"tcp/{target_address}"])
            await client.when_connected()
            await eventually(lambda: top.server.has_session("lax"))
            pool = HTTPConnectionPool(reactor, persistent=False)
            response = await treq.get(
                f"http://127.0.0.1:{port}/client/lax/https/{target_address}/hello", pool=pool)
            self.assertEqual((response.code, await response.content()), (200, b"hello, self-signed"))
            await client.stopService()
            await eventually(lambda: not top.server.has_session("lax"))
            await top.stopService()

        return run(go())


@implementer(IPolicyForHTTPS)
class _TrustOnly:
    """HTTPS policy trusting one self-signed certificate (for the test's own front-door request)."""

    def __init__(self, cert_path: str) -> None:
        with open(cert_path, "rb") as f:
            self._root = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname, port):
        return optionsForClientTLS(hostname.decode(), trustRoot=self._root)


# Real twistd subprocesses.


def twistd_argv() -> list[str]:
    """The twistd of this interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def program_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CATTLE_TUNNEL_DATA_DEBUG"}
    plugins = os.path.dirname(twisted.plugins.__file__)
    installed = os.path.exists(os.path.join(plugins, "remotedialer_plugins.py"))
    if not installed:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    return env


class Program(ProcessProtocol):
    """
    A subprocess whose output is collected; C{ended} fires with its exit
    code (None: killed by a signal).
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.running = False

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.running = False
        self.exit_code = reason.value.exitCode
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(self.exit_code)

    async def terminate(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after C{grace} seconds; the exit code."""
        if self.running:
            self.transport.signalProcess("TERM")
            waited = 0.0
            while self.running and waited < grace:
                await wait(0.05)
                waited += 0.05
            if self.running:
                self.transport.signalProcess("KILL")
        return await self.ended


class ProgramTestCase(TestCase):
    """Tests of the real programs: each spawned in a scratch directory, stopped at the end."""

    timeout = 90

    def spawn(self, *args: str) -> Program:
        program = Program()
        cwd = self.mktemp()
        os.makedirs(cwd)
        argv = twistd_argv() + list(args)
        reactor.spawnProcess(program, argv[0], argv, env=program_env(), path=cwd)
        self.addCleanup(lambda: run(program.terminate(grace=5)))
        return program

    async def finished(self, program: Program, timeout: float = 30.0) -> int | None:
        await eventually(lambda: not program.running, timeout=timeout)
        return await program.ended


class SubprocessTests(ProgramTestCase):

    def test_help_lists_both_plugins(self):
        """twistd --help lists both programs; each program's --help shows its flags."""

        async def go():
            top = self.spawn("--help")
            self.assertEqual(await self.finished(top), 0, top.err)
            self.assertRegex(top.out, rb"remotedialer-server\s+Reverse-tunnel server")
            self.assertRegex(top.out, rb"remotedialer-client\s+Reverse-tunnel client")
            server = self.spawn("remotedialer-server", "--help")
            client = self.spawn("remotedialer-client", "--help")
            self.assertEqual(await self.finished(server), 0, server.err)
            self.assertEqual(await self.finished(client), 0, client.err)
            for flag in (b"--listen", b"--peers", b"--token", b"--target-ca-file", b"--target-insecure"):
                self.assertIn(flag, server.out)
            for flag in (b"--connect", b"--header", b"--allow", b"--ca-file"):
                self.assertIn(flag, client.out)

        return run(go())

    def test_start_up_mistakes_are_one_line(self):
        """
        A port out of range, our own id among the peers, and a busy port:
        one line naming the flag, exit status 1, no traceback.
        """

        async def go():
            busy = await listen_tcp(Factory.forProtocol(Protocol), self)
            cases = [
                (["--listen", "tcp:99999"], b"--listen 'tcp:99999': port 99999 is not 0-65535"),
                (["--id", "a", "--token", "t", "--peers", "a:t:ws://127.0.0.1:9/connect"],
                 b"--peers: 'a' is this server's own id"),
                (["--listen", f"tcp:{busy.getHost().port}:interface=127.0.0.1"],
                 b"--listen: cannot listen on 127.0.0.1:%d: " % busy.getHost().port),
            ]
            for argv, expected in cases:
                program = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                     *argv)
                self.assertEqual(await self.finished(program), 1, argv)
                output = program.out + program.err
                self.assertNotIn(b"Traceback", output)
                self.assertIn(expected, output)

        return run(go())

    def test_bad_flag_is_a_usage_error(self):
        """
        A bad flag: exit status 1, a one-line error naming the flag (twistd
        prints usage errors on stdout), no traceback anywhere.
        """

        async def go():
            server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                "--listen", "bogus:1")
            client = self.spawn("-n", "--pidfile=", "remotedialer-client", "--connect", "http://h/connect")
            for program, expected in [(server, b"--listen 'bogus:1': "), (client, b"--connect: ")]:
                self.assertEqual(await self.finished(program), 1)
                output = program.out + program.err
                self.assertNotIn(b"Traceback", output)
                last = program.out.strip().splitlines()[-1]
                self.assertIn(expected, last)

        return run(go())

    def test_real_programs_fetch_through_front_door(self):
        """
        twistd -n remotedialer-server and remotedialer-client as subprocesses:
        a file served by this process arrives byte for byte through the front
        door; both programs exit 0 on SIGTERM.
        """

        async def go():
            directory = self.mktemp()
            os.makedirs(directory)
            blob = random.Random(11).randbytes(3 * 1024 * 1024 + 5)
            with open(os.path.join(directory, "blob.bin"), "wb") as f:
                f.write(blob)
            target = await listen_tcp(Site(File(directory)), self)
            target_address = f"127.0.0.1:{target.getHost().port}"

            # Per-client tokens, as the README's quick start: a clients file
            # of token hashes for the server, the token in a file for the client.
            token = "t0ken-" + random.Random(3).randbytes(8).hex()
            clients = os.path.abspath(os.path.join(directory, "clients"))  # the programs run elsewhere
            with open(clients, "w") as f:
                f.write(f"sub sha256:{hash_token(token)}\n")
            token_file = os.path.abspath(os.path.join(directory, "token"))
            with open(token_file, "w") as f:
                f.write(token + "\n")
            server = self.spawn(
                "-n", "--pidfile=", "remotedialer-server", "--listen", "tcp:0:interface=127.0.0.1",
                "--clients-file", clients)
            # The listening factory is the header guard in front of the Site.
            await eventually(lambda: re.search(rb"starting on (\d+)", server.out) or not server.running,
                             timeout=30)
            found = re.search(rb"starting on (\d+)", server.out)
            self.assertIsNotNone(found, server.out + server.err)
            port = int(found.group(1))

            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"ws://127.0.0.1:{port}/connect", "--id", "sub",
                                "--token-file", token_file, "--allow", f"tcp/{target_address}")
            pool = HTTPConnectionPool(reactor, persistent=False)
            url = f"http://127.0.0.1:{port}/client/sub/http/{target_address}/blob.bin"
            for _ in range(200):  # until the client's tunnel is up (500: no session yet)
                response = await treq.get(url, pool=pool)
                body = await response.content()
                if response.code != 500 or not client.running:
                    break
                self.assertIn(b"failed to find Session for client sub", body)
                await wait(0.1)
            self.assertEqual(response.code, 200, client.out + client.err)
            self.assertEqual(len(body), len(blob))
            self.assertEqual(body, blob)

            # twistd shuts down cleanly on SIGTERM, then re-raises the signal
            # so its exit status says how it ended.
            for program in (client, server):
                await program.terminate()
                output = program.out + program.err
                self.assertEqual((program.exit_code, program.signal), (None, signal.SIGTERM), output)
                self.assertIn(b"Server Shut Down.", program.out, output)
                self.assertNotIn(b"Traceback", output)

        return run(go())
