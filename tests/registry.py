"""A real OCI registry for the push and pull tests: Debian's ``docker-registry``
(Docker Distribution 2.8) on 127.0.0.1, a free port, filesystem storage in a
temporary folder and one account, checked either by htpasswd (bcrypt; the
registry answers with a Basic challenge) or by a token server of ours (a Bearer
challenge: clients fetch a JWT per repository scope, as from Docker Hub or GHCR).

``running_registry(folder, auth=...)`` starts one and stops it on leaving; the
session fixtures ``registry`` (htpasswd) and ``token_registry`` share one each
between the tests of a session (a test module imports ``registry_fixture`` and
``token_registry_fixture`` to have them). Tests point vmbuild at the account by
writing a Docker auth file with ``write_auth(folder)`` and setting
``DOCKER_CONFIG`` to that folder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

#: Debian's package docker-registry: Docker Distribution 2.8.
REGISTRY_BINARY = "/usr/bin/docker-registry"
#: How long the registry may take to answer /v2/ after it starts.
START_TIMEOUT = 20.0
#: The names the registry and the token server agree on.
TOKEN_SERVICE = "vmbuild-test-registry"
TOKEN_ISSUER = "vmbuild-test-token-server"


@dataclass(frozen=True)
class LocalRegistry:
    """A registry this test session started, and the account it accepts."""

    host: str
    username: str
    password: str
    #: The filesystem driver's root: ``docker/registry/v2/...`` under it.
    storage: Path
    #: The registry's own log (stdout and stderr).
    log: Path
    #: "htpasswd" (Basic) or "token" (Bearer).
    auth: str = "htpasswd"
    #: With token auth: the scopes of the tokens handed out, in order.
    scopes: list[str] = field(default_factory=list)

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def write_auth(
        self, folder: Path, *, username: str | None = None, password: str | None = None
    ) -> Path:
        """Write ``folder/config.json`` in Docker's form (``auths`` → ``auth``, the
        base64 of ``user:password``) for this registry, by default with the right
        account; point ``DOCKER_CONFIG`` at ``folder`` to use it."""
        folder.mkdir(parents=True, exist_ok=True)
        user = self.username if username is None else username
        word = self.password if password is None else password
        auth = base64.b64encode(f"{user}:{word}".encode()).decode()
        path = folder / "config.json"
        path.write_text(json.dumps({"auths": {self.host: {"auth": auth}}}, indent=2) + "\n")
        return path

    def blob_data(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (for tests that damage one)."""
        hexa = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(*argv: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(argv, input=data, check=True, capture_output=True, timeout=30)
    return done.stdout


def _htpasswd(username: str, password: str) -> str:
    """One bcrypt line, the only hash Distribution's htpasswd accepts."""
    return _run("htpasswd", "-Bbn", username, password).decode().strip() + "\n"


# ------------------------------------------------------------------ token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _libtrust_key_id(public_der: bytes) -> str:
    """The ``kid`` Distribution looks a token's key up by: libtrust's key ID, the
    base32 of the first 240 bits of the sha256 of the DER public key, in fours."""
    encoded = base64.b32encode(hashlib.sha256(public_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


@dataclass
class _TokenServer:
    """Hands out RS256 JWTs granting every scope asked for, to the one account."""

    key: Path
    key_id: str
    username: str
    password: str
    scopes: list[str]

    def token(self, query: dict[str, list[str]]) -> str:
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
            self.scopes.append(scope)
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": self.username,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = _run("openssl", "dgst", "-sha256", "-sign", str(self.key), data=signed.encode())
        return f"{signed}.{_b64url(signature)}"

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    self._answer(404, {"error": "not found"})
                elif self.headers.get("Authorization") != expected:
                    self._answer(401, {"error": "bad credentials"})
                else:
                    token = server.token(urllib.parse.parse_qs(url.query))
                    self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@contextlib.contextmanager
def _token_server(
    folder: Path, username: str, password: str, scopes: list[str]
) -> Iterator[tuple[str, Path]]:
    """Serve tokens on 127.0.0.1; yield the realm URL and the certificate of the
    signing key (the registry's ``rootcertbundle``)."""
    key, cert = folder / "token.key", folder / "token.crt"
    _run(
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=vmbuild-test-token", "-keyout", str(key), "-out", str(cert)),
    )
    public = _run("openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER")
    tokens = _TokenServer(key, _libtrust_key_id(public), username, password, scopes)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), tokens.handler())
    thread = threading.Thread(target=httpd.serve_forever, name="token-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/token", cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------ the registry


def _config(port: int, storage: Path, auth: dict[str, object]) -> str:
    # JSON is YAML: no need for a YAML writer.
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": auth,
    }
    return json.dumps(config, indent=2) + "\n"


def _answers(host: str) -> bool:
    """True once /v2/ answers at all: 401 without credentials is the expected answer."""
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=1):
            return True
    except urllib.error.HTTPError as err:
        return err.code == 401
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def running_registry(
    folder: Path, *, auth: Literal["htpasswd", "token"] = "htpasswd"
) -> Iterator[LocalRegistry]:
    """Start a registry with its files under ``folder``; stop it on leaving."""
    needs = ["htpasswd"] if auth == "htpasswd" else ["openssl"]
    if not os.access(REGISTRY_BINARY, os.X_OK) or not all(map(shutil.which, needs)):
        pytest.skip(f"needs docker-registry and {', '.join(needs)}")
    username, password = "vmbuild", secrets.token_urlsafe(12)
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    log_path = folder / "registry.log"
    scopes: list[str] = []
    with contextlib.ExitStack() as stack:
        if auth == "htpasswd":
            htpasswd = folder / "htpasswd"
            htpasswd.write_text(_htpasswd(username, password))
            settings: dict[str, object] = {
                "htpasswd": {"realm": "vmbuild-tests", "path": str(htpasswd)}
            }
        else:
            realm, cert = stack.enter_context(_token_server(folder, username, password, scopes))
            settings = {
                "token": {
                    "realm": realm,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(cert),
                }
            }
        # The port is free when chosen; another process could take it before the
        # registry binds, so a registry that exits at once is tried again elsewhere.
        for _attempt in range(3):
            port = _free_port()
            host = f"127.0.0.1:{port}"
            config = folder / "config.yml"
            config.write_text(_config(port, storage, settings))
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while process.poll() is None and not _answers(host):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"docker-registry did not answer on {host}; see {log_path}"
                        )
                    time.sleep(0.05)
                if process.poll() is not None:
                    continue
                yield LocalRegistry(host, username, password, storage, log_path, auth, scopes)
                return
            finally:
                _stop(process)
    raise RuntimeError(f"docker-registry would not start; see {log_path}")


@pytest.fixture(scope="session", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """The fixture ``registry``: htpasswd accounts (a Basic challenge), one
    registry for the whole session, stopped at its end."""
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="session", name="token_registry")
def token_registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """The fixture ``token_registry``: a Bearer challenge and our token server."""
    with running_registry(tmp_path_factory.mktemp("token-registry"), auth="token") as running:
        yield running
