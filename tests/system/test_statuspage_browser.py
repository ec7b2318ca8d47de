"""
The status page in a real headless browser (Chromium driven by Selenium):
it shows the connected clients and their streams, updates live (a client
that connects appears without a reload), draws its charts, runs under its
own Content Security Policy, and shows a peer-supplied client id as text.

Skipped, saying why, where no browser is installed (Debian: apt-get install
chromium chromium-driver; or point REMOTEDIALER_CHROMIUM and
REMOTEDIALER_CHROMEDRIVER at them).  With REMOTEDIALER_SCREENSHOT=PATH the
test saves a screenshot of the page there.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from remotedialer import TunnelClient, allow_all
from remotedialer.ops._admin import AdminEndpoint, AdminSite
from remotedialer.ops._metrics import ClientMetrics, ServerMetrics
from remotedialer.ops._status import client_status, server_status
from remotedialer.server._forwardstats import ForwarderStats
from tests.support import Collector, Echo, TunnelHarness, listen_tcp

#: Chromium's flags for a headless run as root in a container, offline.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,900")
#: A client id with markup in it: it must show as these characters, not as an element.
#: (no '/': client keys may not have one)
EVIL_KEY = '<b class="evil" onmouseover="alert(1)">bold&amp;<b>\''



#: The clients table as {data-client: {last class of a cell: its text}}, in one go.
ROWS_SCRIPT = """
const rows = {};
for (const row of document.querySelectorAll("#clients tr.client")) {
  const cells = {};
  for (const cell of row.querySelectorAll("td")) cells[cell.className.split(" ").pop()] = cell.textContent;
  rows[row.getAttribute("data-client")] = cells;
}
return rows;
"""


def text_of(driver, selector: str) -> str:
    """The text of the element at C{selector} ("" if none), read at once (the page re-renders)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", selector)


def _find(*names: str) -> str | None:
    for name in names:
        if name.startswith("/"):
            if os.access(name, os.X_OK):
                return name
        elif (found := shutil.which(name)) is not None:
            return found
    return None


def _browser_paths() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise SkipTest("selenium is not installed (pip install '.[test]')") from None
    browser = _find(*filter(None, [os.environ.get("REMOTEDIALER_CHROMIUM"), "chromium", "chromium-browser",
                                   "google-chrome"]))
    driver = _find(*filter(None, [os.environ.get("REMOTEDIALER_CHROMEDRIVER"), "chromedriver"]))
    if browser is None or driver is None:
        raise SkipTest("no Chromium and chromedriver installed: the status page's browser test is skipped "
                       "(Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def _start_browser(browser: str, driver_path: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


class _BrowserTestCase(TestCase):
    """A browser for each test (skipped without one), and waiting on what it shows."""

    timeout = 60

    def setUp(self):
        self.paths = _browser_paths()  # (given both paths, Selenium Manager never runs)

    async def _browser(self):
        profile = tempfile.mkdtemp(prefix="remotedialer-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        driver = await deferToThread(_start_browser, *self.paths, profile)
        self.addCleanup(lambda: deferToThread(driver.quit))
        return driver

    async def _until(self, driver, condition, what: str):
        """Wait (in a thread: the reactor serves the page meanwhile) until C{condition(driver)}."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return await deferToThread(WebDriverWait(driver, 15, poll_frequency=0.1).until, condition)
        except TimeoutException:
            source = await deferToThread(lambda: driver.page_source)
            raise AssertionError(f"the page never showed {what}:\n{source[-3000:]}") from None


class ServerPageBrowserTests(_BrowserTestCase):
    async def _page(self):
        """A server with clients foo and EVIL_KEY's owner to come; its admin endpoint; a browser on it."""
        harness = TunnelHarness(self)
        metrics = ServerMetrics(harness.server)
        await harness.start()
        self.broken = False

        def status(limit):
            if self.broken:
                raise _Broken("status is broken")
            return server_status(harness.server, limit)

        admin = AdminEndpoint(metrics.registry, status)
        self.forwarder = ForwarderStats("socks:tcp:1080:interface=127.0.0.1", "socks")
        admin.status_sections["forwarders"] = lambda: [self.forwarder.snapshot()]
        port = await listen_tcp(AdminSite(admin), self)
        return harness, await self._browser(), admin, f"http://127.0.0.1:{port.getHost().port}/"

    def test_page_shows_clients_live(self):
        from selenium.webdriver.common.by import By

        def rows(driver):
            """The clients table as {client: {column class: text}}, read at once (the page re-renders)."""
            return driver.execute_script(ROWS_SCRIPT)

        async def go():
            harness, driver, _admin, url = await self._page()
            echo = await listen_tcp(Factory.forProtocol(Echo), self)
            echo_address = f"127.0.0.1:{echo.getHost().port}"
            await harness.connect_client("foo")
            streams = []
            for _ in range(2):
                protocol = Collector()
                await harness.server.endpoint("foo", "tcp", echo_address).connect(
                    Factory.forProtocol(lambda p=protocol: p))
                streams.append(protocol)
            streams[0].transport.write(b"x" * 200_000)

            await deferToThread(driver.get, url + "?refresh=0.25")
            shown = await self._until(
                driver, lambda d: (r := rows(d)).get("foo", {}).get("streams") == "2" and r,
                "client foo with 2 streams")
            self.assertEqual(set(shown), {"foo"})
            self.assertRegex(shown["foo"]["remote"], r"^127\.0\.0\.1:\d+$")
            self.assertRegex(shown["foo"]["rate"], r"/s$")

            # A second client connects: it appears without a reload, its id as text.
            await harness.connect_client(EVIL_KEY)
            protocol = Collector()
            await harness.server.endpoint(EVIL_KEY, "tcp", echo_address).connect(
                Factory.forProtocol(lambda: protocol))
            # (The page may show the session a poll before its stream: wait for both.)
            shown = await self._until(
                driver, lambda d: (r := rows(d)).get(EVIL_KEY, {}).get("streams") == "1" and r,
                "the second client with its stream")
            self.assertEqual(shown[EVIL_KEY]["key"], EVIL_KEY)
            evil = await deferToThread(driver.find_elements, By.CSS_SELECTOR, "b.evil")
            self.assertEqual(evil, [])
            summary = await deferToThread(text_of, driver, "#summary")
            self.assertTrue(summary.startswith("2 connected, 3 streams"), summary)

            # A stream closes: the count follows; the chart has been drawing.
            streams[1].transport.loseConnection()
            await self._until(driver, lambda d: rows(d).get("foo", {}).get("streams") == "1",
                             "foo's stream count going down to 1")
            points = await deferToThread(driver.execute_script, """
                const line = document.querySelector('tr[data-client="foo"] svg.chart polyline');
                return line.getAttribute("points");
            """)
            self.assertGreaterEqual(len(points.split()), 2)

            # Other parts' sections: the forwarders' counters, live too.
            self.forwarder.accepted()
            self.forwarder.failed("unauthenticated")
            def forwarders(d):
                text = text_of(d, "#forwarders")
                return "unauthenticated 1" in text and text

            forwarder = await self._until(driver, forwarders, "the forwarder's counters")
            self.assertIn("socks:tcp:1080:interface=127.0.0.1", forwarder)

            screenshot = os.environ.get("REMOTEDIALER_SCREENSHOT")
            if screenshot:
                await deferToThread(driver.save_screenshot, screenshot)
            # The page ran under its CSP with no error (a blocked script would have shown nothing).
            logs = await deferToThread(driver.get_log, "browser")
            errors = [e for e in logs if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
            self.assertEqual(errors, [])

        return defer.Deferred.fromCoroutine(go())

    def test_page_says_when_status_fails(self):
        """/status fails: the page keeps the last state it had and says it is stale."""
        from selenium.webdriver.common.by import By

        async def go():
            harness, driver, _admin, url = await self._page()
            await harness.connect_client("foo")
            await deferToThread(driver.get, url + "?refresh=0.25")
            await self._until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-client="foo"]'),
                              "client foo")
            self.broken = True

            def stale(d):
                state = d.find_element(By.ID, "state")
                return state.get_attribute("class") == "stale" and state.text

            state = await self._until(driver, stale, "the stale warning")
            self.assertIn("cannot reach /status (HTTP 500)", state)
            self.assertTrue(await deferToThread(
                driver.find_elements, By.CSS_SELECTOR, 'tr[data-client="foo"]'))
            self.assertTrue(self.flushLoggedErrors(_Broken))

        return defer.Deferred.fromCoroutine(go())


class _Broken(Exception):
    pass


class ClientPageBrowserTests(_BrowserTestCase):
    def test_client_page(self):
        """A client's page: its tunnel's state and streams, live."""
        from selenium.webdriver.common.by import By

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            client = TunnelClient(harness.url, headers={"X-Tunnel-ID": "agent-1"}, reactor=reactor,
                                  client_key="agent-1", connect_authorizer=allow_all)
            metrics = ClientMetrics(client)
            client.startService()
            self.addCleanup(client.stopService)
            await client.when_connected()
            admin = AdminEndpoint(metrics.registry, lambda limit: client_status(client))
            port = await listen_tcp(AdminSite(admin), self)
            driver = await self._browser()
            await deferToThread(driver.get, f"http://127.0.0.1:{port.getHost().port}/?refresh=0.25")

            def tunnel(d):
                return d.execute_script(TUNNEL_SCRIPT) or {}

            shown = await self._until(driver, lambda d: (t := tunnel(d)).get("state") == "connected" and t,
                                      "the connected tunnel")
            self.assertEqual((shown["key"], shown["streams"]), (harness.url, "0"))
            title = await deferToThread(lambda: driver.find_element(By.ID, "title").text)
            self.assertEqual(title, "remotedialer client agent-1")

            echo = await listen_tcp(Factory.forProtocol(Echo), self)
            protocol = Collector()
            await harness.server.endpoint("agent-1", "tcp", f"127.0.0.1:{echo.getHost().port}").connect(
                Factory.forProtocol(lambda: protocol))
            await self._until(driver, lambda d: tunnel(d).get("streams") == "1", "the tunnel's stream")
            await harness.stop_listening()
            for session in harness.server.sessions.local_sessions():
                session.drop()
            await self._until(driver, lambda d: tunnel(d).get("state") == "connecting", "the tunnel down")

        return defer.Deferred.fromCoroutine(go())


#: The client page's tunnel row as {last class of a cell: its text}.
TUNNEL_SCRIPT = """
const row = document.querySelector("#tunnel tr.tunnel");
if (!row) return null;
const cells = {};
for (const cell of row.querySelectorAll("td")) cells[cell.className.split(" ").pop()] = cell.textContent;
return cells;
"""
