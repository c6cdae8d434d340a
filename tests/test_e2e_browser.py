"""
The example site clicked through in a real browser: headless Chromium (Debian's C{chromium} and
C{chromium-driver}, installed by C{.ci/run}) driven by selenium (the C{test} extra).

A copy of the repository's example site (C{site.ini}, C{services/}, C{templates/}, C{static/},
C{sql/}) runs as the README starts it, and the browser does what a newcomer would: open C{/},
see the stylesheet and the icon applied, follow the link to the guestbook, type
C{<script>alert(1)</script> hello}, submit, and see it shown as text; load the guestbook again
and still see it (L{STORED}); then try a form posted without its CSRF token, and one posted
from another site, and get the site's 403 page both times.  An C{alert()} anywhere would make
every later browser call raise, so the test fails loudly on an injection.

Screenshots go to the test's own directory; C{python -m tests.test_e2e_browser DIR} runs the
same walk and saves them in C{DIR} (how C{docs/images/} is refreshed).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from typing import Any, Callable

from tests.e2e import REPO, TWISTD, E2ETestCase, Site, free_port

#: True once the example guestbook stores its messages (through the database proxy): a fresh
#: GET of the guestbook must then list the message, and never the refused ones.  False: the
#: guestbook echoes what was posted, and that echo is what is checked.
STORED = True

MESSAGE = "<script>alert(1)</script> hello"
WAIT = 15.0
#: What the example site is made of (what exists of it is copied).
EXAMPLE = ("site.ini", "services", "templates", "static", "sql")
#: Chromium as root in a container, with nothing of its own reaching the network.
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root: Chromium's sandbox needs user namespaces it may not get
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--password-store=basic",
    "--use-mock-keychain",
    "--window-size=900,640",
)


def missing() -> str | None:
    """Why the browser cannot run here, or L{None}."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None:
            return f"no {tool} (apt-get install {package}; .ci/run does)"
    return None


def example_site(where: str) -> Site:
    """The repository's example site, copied to C{where}, started as the README says."""
    for name in EXAMPLE:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(where, name), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.exists(src):
            shutil.copy(src, where)
    port = free_port()
    ini = os.path.join(where, "site.ini")
    with open(ini) as f:
        text = f.read()
    text = text.replace("tcp:8080:interface=127.0.0.1", f"tcp:{port}:interface=127.0.0.1")
    text = text.replace("[okws]\n", f"[okws]\njail_root = {os.path.join(where, 'jails')}\n", 1)
    with open(ini, "w") as f:
        f.write(text)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO
    site = Site.launch([*TWISTD, "-n", "--pidfile=", "okws", "--config", "site.ini"], where, port, env)
    site.wait_for(r"site ready", 90)
    return site


def chromium(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # Debian's chromedriver, never one selenium-manager would download.
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def walk(driver: Any, base: str, shots: str, check: Callable[[bool, str], None]) -> None:
    """The newcomer's walk through the example site; C{check(condition, what)} asserts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    def until(condition: Any, what: str) -> Any:
        return WebDriverWait(driver, WAIT).until(condition, f"not within {WAIT}s: {what}")

    def css(selector: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, selector)

    # The front page, styled by the static pool's stylesheet, with its icon.
    driver.get(base + "/")
    until(EC.title_is("okws-twisted examples"), "the index page")
    background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    check(background == "rgb(251, 250, 247)", f"/static/style.css applied (body background {background})")
    icon = until(lambda d: d.execute_script(
        "const i = document.querySelector('header img'); return i.complete && i.naturalWidth"), "the icon loaded")
    check(icon == 16, f"/favicon.ico is a 16-pixel icon ({icon})")
    driver.save_screenshot(os.path.join(shots, "example-index.png"))

    # Follow the link; sign the guestbook with markup.
    css('ul.examples a[href="/guestbook"]').click()
    until(EC.title_is("Guestbook"), "the guestbook page")
    token = css('form input[name="csrf_token"]').get_attribute("value")
    check(bool(re.fullmatch(r"[A-Za-z0-9_-]{43}", token or "")), f"the form carries a CSRF token ({token!r})")
    css('input[name="message"]').send_keys(MESSAGE)
    css('form button[type="submit"]').click()
    written = until(EC.presence_of_element_located((By.CSS_SELECTOR, "p.written")), "the answer to the post")
    check(written.text == "You wrote: " + MESSAGE, f"the message shown as text ({written.text!r})")
    check("&lt;script&gt;" in written.get_attribute("innerHTML"), "the markup escaped in the page")
    check(driver.execute_script("return document.querySelectorAll('main script').length") == 0, "no script element made")
    if STORED:
        driver.get(base + "/guestbook")
        until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "ol.messages"), MESSAGE), "the message stored")
    driver.save_screenshot(os.path.join(shots, "example-guestbook.png"))

    # The same form without its token: the site's 403 page, nothing stored.
    driver.get(base + "/guestbook")
    until(EC.title_is("Guestbook"), "the guestbook page again")
    css('input[name="message"]').send_keys("forged without a token")
    driver.execute_script("document.querySelector('input[name=csrf_token]').remove(); document.forms[0].submit()")
    until(EC.title_is("403 Forbidden"), "the 403 page for a form without its token")
    check("did not come from this site" in css("main").text, "the 403 page says why")
    check(driver.execute_script("return document.body.className") == "error", "the 403 page in the site's own look")
    driver.save_screenshot(os.path.join(shots, "example-403.png"))

    # A form on another site (an opaque origin) posting here: no cookie goes with it (SameSite).
    forged = (
        f"<form method=post action='{base}/guestbook'><input name=message value='forged from elsewhere'>"
        "<input name=csrf_token value='AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'></form>"
        "<script>document.forms[0].submit()</script>"
    )
    driver.get("data:text/html," + forged)
    until(EC.title_is("403 Forbidden"), "the 403 page for a form from another site")
    driver.get(base + "/guestbook")
    until(EC.title_is("Guestbook"), "the guestbook page after the refusals")
    page = css("main").text
    check("forged" not in page, "nothing of the refused posts on the page")


class BrowserTests(E2ETestCase):
    def setUp(self) -> None:
        why = missing()
        if why is not None:
            self.skipTest(why)
        where = tempfile.mkdtemp(prefix="okws-browser-")
        self.addCleanup(shutil.rmtree, where, True)
        os.mkdir(os.path.join(where, "site"))
        self.site = example_site(os.path.join(where, "site"))
        self.addCleanup(self.site.close)
        self.driver = chromium(os.path.join(where, "profile"))
        self.addCleanup(self.driver.quit)
        self.shots = os.path.join(where, "shots")
        os.mkdir(self.shots)

    def check(self, condition: bool, what: str) -> None:
        self.assertTrue(condition, what)

    def test_newcomer_walk(self) -> None:
        walk(self.driver, f"http://127.0.0.1:{self.site.port}", self.shots, self.check)
        for name in ("example-index.png", "example-guestbook.png", "example-403.png"):
            with open(os.path.join(self.shots, name), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", name)
        # The stylesheet and the icon came from the static pool, kept alive with the pages.
        log = self.site.wait_for_log("access.log", lambda text: '"GET /favicon.ico HTTP/1.1" 200' in text)
        self.assertRegex(log, r'"GET /static/style.css HTTP/1.1" 200 \d+ .* assets ')
        self.assertIn('"POST /guestbook HTTP/1.1" 403', log)


def main(argv: list[str]) -> int:
    """Save the walk's screenshots in argv[1] (docs/images)."""
    out = os.path.abspath(argv[1])
    os.makedirs(out, exist_ok=True)
    where = tempfile.mkdtemp(prefix="okws-browser-")
    site = driver = None
    try:
        os.mkdir(os.path.join(where, "site"))
        site = example_site(os.path.join(where, "site"))
        driver = chromium(os.path.join(where, "profile"))

        def check(condition: bool, what: str) -> None:
            if not condition:
                raise AssertionError(what)

        walk(driver, f"http://127.0.0.1:{site.port}", out, check)
        print("\n".join(os.path.join(out, n) for n in sorted(os.listdir(out)) if n.startswith("example-")))
    finally:
        if driver is not None:
            driver.quit()
        if site is not None:
            site.close()
        shutil.rmtree(where, True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
