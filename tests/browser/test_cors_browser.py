"""A real browser as the API's client: headless Chromium (Debian's) driven by Selenium.

The API and two static pages are served on three loopback ports, so three origins: the page
from the allowed origin, the page from a disallowed one, and the API itself. Everything the
test asserts about CORS is read back from the page, as a web app would see it; the CSP test
navigates the browser to a deliberately vulnerable view of the API and reads Chrome's console.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, Response, request
from werkzeug.serving import make_server

from flask_apiguard import ApiGuard, current_identity, public

from ..conftest import IN_CI, SECRET, token_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-component-update",
                "--disable-sync")
XSS = "<script>document.title='pwned'</script>"

#: fetch(url, init) from the page; resolves with what the page could read, or the error.
FETCH = """
const [url, init, names, done] = arguments;
fetch(url, init).then(async (r) => {
  const headers = {};
  for (const name of names) headers[name] = r.headers.get(name);
  done({ok: true, status: r.status, headers: headers, body: await r.text()});
}).catch((e) => done({ok: false, name: e.name, message: String(e.message)}));
"""
READABLE = ["content-type", "x-request-id", "ratelimit-limit", "ratelimit-remaining",
            "ratelimit-reset", "x-frame-options", "content-security-policy"]


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} - under CI=true the browser test must run "
                        "(make browser-deps installs chromium and chromium-driver).")
        pytest.skip(reason)


@dataclass
class Site:
    """The three origins and what the API saw."""

    api: str
    allowed: str
    disallowed: str
    app: Flask
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)

    def requests_to(self, path: str) -> list[tuple[str, str | None]]:
        return [(method, origin) for method, p, origin in self.seen if p == path]


def build_api(instance: Path, page_origin: str) -> Flask:
    app = Flask("browser_api", instance_path=str(instance))
    app.config.update(
        TESTING=True,
        APIGUARD_JWT_SECRET=SECRET,
        APIGUARD_API_KEY_STORE="memory://",
        APIGUARD_FORCE_HTTPS=False,
        APIGUARD_CORS_ORIGINS=[page_origin],
        APIGUARD_CORS_CREDENTIALS=True,
    )

    @app.get("/health")
    @public
    def health() -> Any:
        return {"status": "healthy"}

    @app.get("/private")
    def private() -> Any:
        return {"subject": current_identity.subject}

    @app.get("/reflect")
    @public
    def reflect() -> Any:
        # Deliberately vulnerable (reflected XSS), to show the CSP stopping the injected script.
        return Response(f"<html><body>{request.args.get('q', '')}</body></html>", mimetype="text/html")

    ApiGuard(app)
    return app


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_pages(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    directory.mkdir()
    (directory / "index.html").write_text("<!doctype html><title>client</title><p>client</p>")
    # The same reflected markup as the API's /reflect, served without a CSP: the control.
    (directory / "no-csp.html").write_text(f"<html><body>{XSS}</body></html>")
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the kernel picks a free one
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("browser")
    allowed_server, allowed = serve_pages(root / "allowed")
    disallowed_server, disallowed = serve_pages(root / "disallowed")
    app = build_api(root / "instance", allowed)
    site = Site(api="", allowed=allowed, disallowed=disallowed, app=app)

    def recorder(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        site.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_ORIGIN")))
        return app(environ, start_response)

    api_server = make_server("127.0.0.1", 0, recorder, threaded=True)
    threading.Thread(target=api_server.serve_forever, daemon=True).start()
    site.api = f"http://127.0.0.1:{api_server.server_port}"
    yield site
    for server in (api_server, allowed_server, disallowed_server):
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _require(os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is not installed (apt-get install chromium)")
    _require(os.access(CHROMEDRIVER, os.X_OK),
             f"{CHROMEDRIVER} is not installed (apt-get install chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        _require(False, "selenium is not installed (pip install -e '.[test]')")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download anything
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        profile = tmp_path_factory.mktemp("chromium-profile")
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.set_script_timeout(15)
        browser.set_page_load_timeout(15)
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_fetch(driver: Any, page: str, url: str, init: dict[str, Any] | None = None) -> dict[str, Any]:
    """``fetch(url, init)`` run by a page loaded from the origin ``page``."""
    if not driver.current_url.startswith(page + "/"):
        driver.get(page + "/index.html")
    result: dict[str, Any] = driver.execute_async_script(FETCH, url, init or {}, READABLE)
    return result


# -- (a) the allowed origin reads bodies and the exposed headers ----------------------------------

def test_allowed_origin_reads_json_and_exposed_headers(driver: Any, site: Site) -> None:
    result = page_fetch(driver, site.allowed, site.api + "/health")
    assert result["ok"], result
    assert result["status"] == 200
    assert result["body"].strip() == '{"status":"healthy"}'
    headers = result["headers"]
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"]
    assert headers["ratelimit-limit"] == "100"
    assert int(headers["ratelimit-remaining"]) < 100
    assert headers["ratelimit-reset"].isdigit()
    # not exposed, so not readable from a cross-origin page although the API sent them
    assert headers["x-frame-options"] is None
    assert headers["content-security-policy"] is None


def test_allowed_origin_reads_a_401_problem(driver: Any, site: Site) -> None:
    result = page_fetch(driver, site.allowed, site.api + "/private")
    assert result["ok"], result
    assert result["status"] == 401
    assert result["headers"]["content-type"] == "application/problem+json"
    body = json.loads(result["body"])
    assert body["error"] == "unauthorized"
    assert body["request_id"] == result["headers"]["x-request-id"]
    assert result["headers"]["ratelimit-limit"] is None  # refused before any rate limit


# -- (b) a disallowed origin: the browser blocks the answer ---------------------------------------

def test_disallowed_origin_gets_a_network_error(driver: Any, site: Site) -> None:
    site.seen.clear()
    result = page_fetch(driver, site.disallowed, site.api + "/health")
    assert result == {"ok": False, "name": "TypeError", "message": "Failed to fetch"}
    # A simple GET reaches the server; it is the browser that withholds the answer.
    assert site.requests_to("/health") == [("GET", site.disallowed)]


# -- (c) credentials: a bearer token triggers a preflight -------------------------------------------

def credentialed(site: Site) -> dict[str, Any]:
    token = token_for(site.app, "alice")
    return {"credentials": "include", "headers": {"Authorization": f"Bearer {token}"}}


def test_credentialed_request_from_the_allowed_origin(driver: Any, site: Site) -> None:
    site.seen.clear()
    result = page_fetch(driver, site.allowed, site.api + "/private", credentialed(site))
    assert result["ok"], result
    assert result["status"] == 200
    assert result["body"].strip() == '{"subject":"alice"}'
    assert site.requests_to("/private") == [("OPTIONS", site.allowed), ("GET", site.allowed)]


def test_credentialed_request_from_a_disallowed_origin_stops_at_the_preflight(driver: Any,
                                                                             site: Site) -> None:
    site.seen.clear()
    result = page_fetch(driver, site.disallowed, site.api + "/private", credentialed(site))
    assert result["ok"] is False
    assert result["name"] == "TypeError"
    # The preflight was refused, so the browser never sent the token.
    assert site.requests_to("/private") == [("OPTIONS", site.disallowed)]


# -- (d) the CSP on the API's responses stops an injected inline script ---------------------------

def test_csp_blocks_reflected_xss(driver: Any, site: Site) -> None:
    driver.get_log("browser")  # drop what earlier tests logged
    driver.get(f"{site.api}/reflect?q={quote(XSS)}")
    assert "document.title='pwned'" in driver.page_source  # the injection is in the page...
    assert driver.title != "pwned"  # ...but it did not run
    messages = [entry["message"] for entry in driver.get_log("browser")]
    assert any("Content Security Policy" in m and "inline script" in m and "default-src 'none'" in m
               for m in messages), messages


def test_control_the_same_page_without_csp_runs_the_script(driver: Any, site: Site) -> None:
    """Without the API's headers the same markup runs: the CSP is what made the difference."""
    driver.get(site.allowed + "/no-csp.html")
    assert driver.title == "pwned"
