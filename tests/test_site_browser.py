"""The built docs site in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

`make test-docs` runs it after `make docs`; it builds its own copy of the site, serves it over HTTP on
127.0.0.1 and opens the home page, the answer and a claim: each must render its images (every <img>
loaded, with a width) and log no console error. Skipped where chromium, chromedriver or selenium is missing.
"""
from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index.html", "results/index.html", "results/claims/18-resnet-full.html"]


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs installs it)")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test reports what failed; the access log is noise
        pass


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the docs extra is not installed")
    binary, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


IMAGES = """
return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);
"""


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_its_images_and_no_console_error(site, browser, page):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{site}/{page}")
    browser.execute_script("return document.readyState")  # get() returns once the load event fired
    assert browser.find_element("css selector", "article h1").text.strip(), f"{page}: no heading rendered"
    images = browser.execute_script(IMAGES)
    content = [src for src, *_ in images if "/assets/" not in src]
    assert content, f"{page}: no figure on the page"
    not_loaded = [src for src, complete, width in images if not (complete and width > 0)]
    assert not_loaded == [], f"{page}: images that did not load: {not_loaded}"
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], f"{page}: console errors: {errors}"


def test_a_missing_image_is_caught(site, browser, tmp_path):
    """The check itself: a page whose image is missing fails the image test and logs a console error."""
    browser.get_log("browser")
    browser.get(f"{site}/no-such-page.html")  # a 404 from the server: chromium logs it
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    browser.get(f"{site}/index.html")
    browser.execute_script("const i = document.createElement('img'); i.src = 'gone.png'; document.body.appendChild(i);")
    browser.execute_script("return new Promise(r => setTimeout(r, 300));")
    images = browser.execute_script(IMAGES)
    assert any(src == "gone.png" and not width for src, _, width in images)
