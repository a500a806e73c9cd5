"""A small real HTTP server on loopback that serves JWKS and discovery documents the way a test
wants them (headers, delays, redirects, sizes), and counts what it was asked. Used where the
npm provider (tests/oidc) cannot be told to misbehave."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0


class JwksServer:
    """``server.url``; ``server.answer(path, ...)`` sets what ``path`` answers;
    ``server.hits[path]`` counts the requests; ``server.stop()``."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.hits: Counter[str] = Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server calls it by this name
                owner.hits[self.path] += 1
                answer = owner.answers.get(self.path, Answer(404, b"{}"))
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, document: Any = None, *, status: int = 200,
               headers: dict[str, str] | None = None, delay: float = 0.0,
               raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(document).encode()
        self.answers[path] = Answer(status, body, headers or {"Content-Type": "application/json"},
                                    delay)

    def publish(self, *keys: tuple[str, Any], path: str = "/jwks", **options: Any) -> None:
        """Serve the public JWKS of ``(kid, private_key)`` pairs at ``path``."""
        self.answer(path, jwks_of(*keys), **options)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def public_jwk(kid: str, private_key: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    public = private_key.public_key()
    family: Any = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else \
        jwt.algorithms.ECAlgorithm if isinstance(public, ec.EllipticCurvePublicKey) else \
        jwt.algorithms.OKPAlgorithm
    jwk: dict[str, Any] = family.to_jwk(public, as_dict=True)
    jwk.pop("key_ops", None)
    jwk.update(kid=kid, use="sig")
    return jwk


def jwks_of(*keys: tuple[str, Any]) -> dict[str, Any]:
    return {"keys": [public_jwk(kid, key) for kid, key in keys]}


def sign(private_key: Any, kid: str | None, alg: str = "RS256", **claims: Any) -> str:
    """A token signed by ``private_key`` with ``kid``; ``sub`` and a 5-minute ``exp`` unless
    given."""
    now = int(time.time())
    payload = {"sub": "client-1", "iat": now, "exp": now + 300, **claims}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, private_key, algorithm=alg, headers=headers)
