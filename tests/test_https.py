"""HTTPS: plain GET/HEAD redirected with 301, other methods refused, HSTS only over HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import problem


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_plain_get_and_head_redirect(client: Any, method: str) -> None:
    response = client.open("/health?x=1", method=method, base_url="http://api.example.com")
    assert response.status_code == 301
    assert response.headers["Location"] == "https://api.example.com/health?x=1"
    assert "Strict-Transport-Security" not in response.headers
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_plain_other_methods_refused(client: Any, method: str) -> None:
    response = client.open("/echo", method=method, base_url="http://localhost")
    assert response.status_code == 403
    assert problem(response)["error"] == "https_required"


def test_unknown_paths_redirect_too(client: Any) -> None:
    assert client.get("/nope", base_url="http://localhost").status_code == 301


def test_raw_forwarded_proto_is_not_believed(client: Any) -> None:
    response = client.post("/echo", base_url="http://localhost",
                           headers={"X-Forwarded-Proto": "https"}, json={})
    assert problem(response)["error"] == "https_required"


def test_trusted_proxy_proto_is_believed(make_app: Any) -> None:
    app = make_app(APIGUARD_TRUSTED_PROXIES=1)
    response = app.test_client().get("/health", base_url="http://internal",
                                      headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_force_https_off(make_app: Any) -> None:
    app = make_app(APIGUARD_FORCE_HTTPS=False)
    response = app.test_client().get("/health", base_url="http://localhost")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.parametrize("proto", ["xxxxxxxevil.example", "javascript", "ftp", "https,evil"])
def test_a_forwarded_scheme_other_than_http_or_https_is_refused(make_app: Any, proto: str) -> None:
    # The Location was built by slicing "http://" off the URL: a 19-character scheme from
    # X-Forwarded-Proto turned the 301 into a redirect to evil.example.
    app = make_app(APIGUARD_TRUSTED_PROXIES=1, APIGUARD_TRUSTED_HOSTS=["api.example.com"])
    response = app.test_client().get("/health", base_url="http://api.example.com",
                                      headers={"X-Forwarded-Proto": proto})
    assert response.status_code == 400
    assert problem(response)["error"] == "bad_request"
    assert "Location" not in response.headers


@pytest.mark.parametrize(("base", "headers", "location"), [
    ("http://api.example.com", {"X-Forwarded-Proto": "http"}, "https://api.example.com/health?x=1"),
    ("http://internal", {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "api.example.com"},
     "https://api.example.com/health?x=1"),
    ("http://api.example.com:8080", {}, "https://api.example.com:8080/health?x=1"),
])
def test_the_redirect_location_is_the_checked_host_and_the_path(
        make_app: Any, base: str, headers: dict[str, str], location: str) -> None:
    app = make_app(APIGUARD_TRUSTED_PROXIES=1 if headers else 0,
                   APIGUARD_TRUSTED_HOSTS=["api.example.com"])
    response = app.test_client().get("/health?x=1", base_url=base, headers=headers)
    assert response.status_code == 301
    assert response.headers["Location"] == location


def test_plain_http_redirect_is_not_cacheable_without_trusted_hosts(client: Any) -> None:
    # The 301 names an unchecked Host; without TRUSTED_HOSTS a cache could keep it (and serve it).
    response = client.get("/health", base_url="http://evil.com",
                          headers={"Authorization": "Bearer x"})
    assert response.status_code == 301
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("header", [("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "on"),
                                    ("X-Forwarded-Protocol", "ssl")])
def test_a_scheme_the_server_took_from_a_header_is_not_believed_without_proxies(
        client: Any, header: tuple[str, str]) -> None:
    # gunicorn's defaults set wsgi.url_scheme=https from these headers for a loopback peer,
    # so with APIGUARD_TRUSTED_PROXIES=0 a plain request passed FORCE_HTTPS and got HSTS.
    name, value = header
    get = client.get("/health", base_url="https://localhost", headers={name: value})
    assert get.status_code == 301
    assert get.headers["Location"] == "https://localhost/health"
    assert "Strict-Transport-Security" not in get.headers
    post = client.post("/echo", base_url="https://localhost", headers={name: value}, json={})
    assert problem(post)["error"] == "https_required"


def test_the_servers_own_tls_is_still_https_when_a_client_sends_forwarded_headers(
        make_app: Any) -> None:
    import socket
    import ssl

    app = make_app()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.socket() as raw, context.wrap_socket(raw, server_hostname="localhost",
                                                     do_handshake_on_connect=False) as tls:
        response = app.test_client().get(
            "/health", base_url="https://localhost", headers={"X-Forwarded-Proto": "https"},
            environ_base={"gunicorn.socket": tls})
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.slow
def test_gunicorn_with_its_defaults_cannot_make_a_plain_request_https(tmp_path: Any) -> None:
    # The real server: gunicorn believes X-Forwarded-Proto from 127.0.0.1 by default.
    import http.client
    import shutil
    import subprocess
    import sys
    import time

    from .conftest import SECRET, free_port

    if shutil.which("gunicorn", path=str(__import__("pathlib").Path(sys.executable).parent)) is None:
        pytest.skip("gunicorn is not installed")
    (tmp_path / "guarded.py").write_text(
        "from flask import Flask, request\n"
        "from flask_apiguard import ApiGuard, public\n"
        "app = Flask(__name__)\n"
        f"app.config.update(APIGUARD_JWT_SECRET={SECRET!r}, APIGUARD_API_KEY_STORE='memory://')\n"
        "@app.route('/health', methods=['GET', 'POST'])\n"
        "@public\n"
        "def health():\n"
        "    return {'scheme': request.scheme}\n"
        "ApiGuard(app)\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "guarded:app"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health", headers={"X-Forwarded-Proto": "https"})
                response = connection.getresponse()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status == 301
        assert response.getheader("Location") == f"https://127.0.0.1:{port}/health"
        assert response.getheader("Strict-Transport-Security") is None
        response.read()
        connection.request("POST", "/health", body=b"{}", headers={
            "X-Forwarded-Ssl": "on", "Content-Type": "application/json"})
        refused = connection.getresponse()
        assert refused.status == 403
        assert b"https_required" in refused.read()
        connection.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
