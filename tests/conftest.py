"""Small factories shared by the suite (in the manner of flask-limiter's ``extension_factory``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_apiguard import ApiGuard, public

#: flask-apiguard's own pytest plugin (pyproject.toml's addopts explain why not by entry point).
pytest_plugins = ["flask_apiguard.testing"]

#: A 48-byte HMAC secret with plenty of distinct characters (the audit flags weak ones).
SECRET = "kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx"
IN_CI = os.environ.get("CI", "").lower() == "true"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


class HttpsClient(FlaskClient):
    """A test client whose requests go to ``https://localhost`` unless told otherwise."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        if not args or isinstance(args[0], str):
            kwargs.setdefault("base_url", "https://localhost")
        return super().open(*args, **kwargs)


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "TESTING": True,
        "APIGUARD_JWT_SECRET": SECRET,
        "APIGUARD_API_KEY_STORE": "memory://",
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(tmp_path: Any) -> Callable[..., Flask]:
    """``make_app(**config)``: a Flask app with ApiGuard, a public ``/health`` and a protected
    ``/private`` (GET) and ``/echo`` (POST), requests over HTTPS by default."""

    def factory(init: bool = True, **config: Any) -> Flask:
        app = Flask("apiguard_test", instance_path=str(tmp_path / "instance"))
        app.test_client_class = HttpsClient
        app.config.update(base_config(**config))

        @app.get("/health")
        @public
        def health() -> Any:
            return {"status": "healthy"}

        @app.get("/private")
        def private() -> Any:
            from flask_apiguard import current_identity

            return {"subject": current_identity.subject, "method": current_identity.method}

        @app.post("/echo")
        def echo() -> Any:
            from flask import request

            return {"json": request.get_json(silent=True)}

        if init:
            ApiGuard(app)
        return app

    return factory


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token_for(app: Flask, subject: str = "alice", **kwargs: Any) -> str:
    with app.app_context():
        token: str = ApiGuard().issue_token(subject, **kwargs)
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(response: Any) -> dict[str, Any]:
    """The problem+json body of ``response``, checked for the contract's members."""
    assert response.mimetype == "application/problem+json", response.data[:200]
    body: dict[str, Any] = json.loads(response.data)
    for member in ("type", "title", "status", "detail", "error", "request_id"):
        assert member in body, f"{member} missing from {body}"
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# -- keys ---------------------------------------------------------------------------------------

def private_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="session")
def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def ed_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


# -- Redis --------------------------------------------------------------------------------------

def _redis_or_skip(url: str) -> Any:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        client.ping()
    except Exception as exc:
        message = f"Redis is not reachable at {url} ({type(exc).__name__}); set REDIS_URL"
        if IN_CI:
            pytest.fail(f"{message} - under CI=true the Redis tests must run.")
        pytest.skip(message)
    return client


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database for this test, emptied before and after (``REDIS_URL``, db 9 default)."""
    url = os.environ.get("REDIS_URL_TESTS") or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    parts = urlsplit(url)
    if parts.path in ("", "/", "/0"):
        url = urlunsplit(parts._replace(path="/9"))
    client = _redis_or_skip(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, to kill and restart at will."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; under CI=true the fault tests must run.")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(binary)
    server.start()
    yield server
    server.stop()
