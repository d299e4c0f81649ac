"""Push an OCI image layout to an OCI distribution registry and pull one back.

A layout is a folder with ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``;
``index.json`` names its entries with the annotation
``org.opencontainers.image.ref.name``. ``push`` sends the tree under one named entry
(an image index and its image manifests, or a single manifest: every config and
layer, then the child manifests by digest, then the top one by tag) and every
manifest of the layout whose ``subject`` points into that tree (signatures, OCI 1.1
referrers). ``pull`` brings such a tree and its referrers back into a layout,
checking every blob's digest and size, and resumes where an interrupted pull
stopped. Media types of configs and layers are opaque here, and manifest bytes go
both ways unchanged, so digests hold.

The talking is done by oras-py's ``oras.provider.Registry``: its session, its
``do_request`` with its auth backends (HTTP basic, bearer tokens), ``blob_exists``,
``chunked_upload`` (a large blob goes in chunks read from the file, never whole),
``get_blob`` (streamed). What is ours: oras's request wrapper retries every
failure five times with sleeps of up to 83 s (minutes before "connection refused"
or a wrong password is reported), so the wrapped function is called once; oras's
token backend resends a token for one scope (pull) where another is asked for
(push), so ``_Client`` drops it and lets oras ask again; the first ``GET /v2/``
picks oras's backend (Basic or Bearer); credentials come from the places podman,
skopeo and docker read (``_auth_files``), not only ``~/.docker/config.json``; and
the fallback tag of the OCI 1.1 referrers schema, which oras does not know.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import oras.auth  # type: ignore[import-untyped]
import oras.container  # type: ignore[import-untyped]
import oras.provider  # type: ignore[import-untyped]
import requests
from vmbuild import log
from vmbuild.errors import BuildError
from vmbuild.host.files import file_digest, write_atomic

#: ``progress(name, done_bytes, total_bytes)``: a blob's title annotation, else its digest.
Progress = Callable[[str, int, int], None]
#: A manifest or descriptor as JSON.
Json = dict[str, Any]

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
#: What a GET of a manifest accepts: OCI first, Docker's schema 2 for old content.
ACCEPT = ", ".join((INDEX, MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
LAYOUT_VERSION = "1.0.0"

#: A blob goes up in PATCH requests of this size: the most of it held in memory.
UPLOAD_CHUNK = 16 << 20
#: A blob comes down in reads of this size.
DOWNLOAD_CHUNK = 1 << 20
#: Registries must accept manifests of 4 MiB; larger is not a manifest.
MAX_MANIFEST = 4 << 20
#: How many other repositories a push looks in for a blob it would send.
MAX_MOUNT_SOURCES = 50
#: Seconds to wait for the first answer of a registry.
PING_TIMEOUT = 15.0
#: Nesting of image indexes beyond which the tree is refused.
MAX_DEPTH = 8
#: Where a temporary download sits, beside the blob it becomes.
PARTIAL_SUFFIX = ".partial"

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_ENV_USER = "VMBUILD_REGISTRY_USERNAME"
_ENV_PASSWORD = "VMBUILD_REGISTRY_PASSWORD"

_CONNECTING = "connecting"
_REF_HINT = "write it as HOST[:PORT]/REPOSITORY:TAG, e.g. 127.0.0.1:5000/labs/demo:2026-12"


class RegistryError(BuildError):
    """A push or pull failed: a bad reference or layout, a registry that could not be
    reached or refused, or content that is not what its digest says."""


def _lacks(what: str, place: str) -> RegistryError:
    """A local layout misses a manifest or blob that its index or a manifest lists."""
    return RegistryError(
        f"the layout lacks {what}",
        place=place,
        hint="the layout is incomplete: pack or pull it again",
    )


@dataclass(frozen=True)
class Reference:
    """``host[:port]/repository:tag``."""

    host: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


@dataclass(frozen=True)
class PushResult:
    """What a push did; the counts are of configs and layers (manifests always go)."""

    digest: str
    sent_blobs: int = 0
    sent_bytes: int = 0
    skipped_blobs: int = 0
    skipped_bytes: int = 0
    #: Blobs the registry had in another repository, mounted rather than sent.
    mounted_blobs: int = 0
    mounted_bytes: int = 0
    #: Digests of the referrer manifests pushed with the tree.
    referrers: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullResult:
    """What a pull did; the counts are of configs and layers. ``fetched_bytes`` is
    what came over the network: a resumed blob counts only its missing part."""

    digest: str
    tag: str
    fetched_blobs: int = 0
    fetched_bytes: int = 0
    reused_blobs: int = 0
    reused_bytes: int = 0
    #: Digests of the referrer manifests pulled with the tree.
    referrers: tuple[str, ...] = ()


# ------------------------------------------------------------------ references


def parse_ref(ref: str) -> Reference:
    """Split ``host[:port]/repository:tag``, refusing anything else (a reference
    without a registry host, a repository or a tag, or one by digest)."""

    def bad(why: str) -> RegistryError:
        return RegistryError(f"bad registry reference: {why}", place=ref, hint=_REF_HINT)

    if "@" in ref:
        raise bad("a reference by digest; name a tag")
    host, slash, rest = ref.partition("/")
    if not slash or not rest:
        raise bad("no repository")
    if not _HOST.fullmatch(host) or not (
        "." in host or ":" in host or host == "localhost" or host.startswith("[")
    ):
        raise bad(f"{host!r} is not a registry host (name it: a dotted name, host:port)")
    repository, colon, tag = rest.rpartition(":")
    if not colon or not tag:
        raise bad("no tag")
    if not repository:
        raise bad("no repository")
    if not _REPOSITORY.fullmatch(repository):
        raise bad(f"{repository!r} is not a repository name (lowercase a-z, 0-9, . _ - and /)")
    if not _TAG.fullmatch(tag):
        raise bad(f"{tag!r} is not a tag (A-Z a-z 0-9 . _ -, at most 128, not starting with . -)")
    return Reference(host, repository, tag)


def _bare_host(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if ":" in host else host


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine: 127.0.0.0/8, ::1 or localhost."""
    name = _bare_host(host)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class _Credentials:
    username: str
    password: str
    source: str


def _auth_files() -> list[Path]:
    """The auth files read, first match wins: podman's and skopeo's, then Docker's."""
    files: list[Path] = []
    if auth_file := os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(auth_file))
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(runtime) / "containers" / "auth.json")
    if docker := os.environ.get("DOCKER_CONFIG"):
        files.append(Path(docker) / "config.json")
    else:
        files.append(Path.home() / ".docker" / "config.json")
    return files


def credential_places() -> str:
    """Where credentials are read from, for messages."""
    files = ", ".join(str(path) for path in _auth_files())
    return f"{_ENV_USER}/{_ENV_PASSWORD}, then {files}"


def _aliases(host: str) -> list[str]:
    names = [host]
    if host.startswith("localhost"):
        names.append("127.0.0.1" + host.removeprefix("localhost"))
    elif host.startswith("127.0.0.1"):
        names.append("localhost" + host.removeprefix("127.0.0.1"))
    return names


def _auth_key(key: str) -> str:
    """An ``auths`` key as ``host[/path]``: docker writes ``https://host/v1/`` too."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    key = re.sub(r"/v[12]/?$", "", key)
    return key.rstrip("/")


def _credentials(ref: Reference) -> _Credentials | None:
    user, password = os.environ.get(_ENV_USER, ""), os.environ.get(_ENV_PASSWORD, "")
    if user or password:
        if not (user and password):
            raise RegistryError(
                f"only one of {_ENV_USER} and {_ENV_PASSWORD} is set",
                place=ref.host,
                hint="set both, or neither to use an auth file",
            )
        return _Credentials(user, password, f"${_ENV_USER}/${_ENV_PASSWORD}")
    # Most specific first: host/repo/sub, host/repo, host (podman's auth.json allows paths).
    parts = ref.repository.split("/")
    keys = [
        f"{alias}/{'/'.join(parts[:n])}" if n else alias
        for n in range(len(parts), -1, -1)
        for alias in _aliases(ref.host)
    ]
    for path in _auth_files():
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RegistryError(
                f"cannot read the auth file: {err}",
                place=str(path),
                hint="fix or remove it",
            ) from err
        auths = config.get("auths") if isinstance(config, dict) else None
        if not isinstance(auths, dict):
            continue
        entries = {_auth_key(str(key)): value for key, value in auths.items()}
        for key in keys:
            entry = entries.get(key)
            encoded = entry.get("auth") if isinstance(entry, dict) else None
            if not encoded or not isinstance(encoded, str):
                continue
            try:
                user, colon, password = base64.b64decode(encoded).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                colon = ""
            if not colon or not user:
                raise RegistryError(
                    f"the auth entry for {key} is not base64 of user:password",
                    place=str(path),
                    hint="log in again (podman login, docker login) or fix the entry",
                )
            return _Credentials(user, password, str(path))
    return None


# ------------------------------------------------------------------ the client


#: oras's ``do_request`` without its retry decorator (see the module docstring).
_REQUEST_ONCE: Callable[..., requests.Response] = oras.provider.Registry.do_request.__wrapped__


class _Client(oras.provider.Registry):  # type: ignore[misc]
    """oras's client, each request sent once (with oras's answer to an auth
    challenge), a bearer token for another scope renewed, and uploaded chunks told."""

    def __init__(self, host: str, plain_http: bool) -> None:
        super().__init__(hostname=host, insecure=plain_http, auth_backend="token")
        #: Called with the length of each chunk the registry accepted.
        self.on_chunk: Callable[[int], None] | None = None

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: bytes | Json | None = None,
        headers: dict[str, str] | None = None,
        json: Json | None = None,
        stream: bool = False,
    ) -> requests.Response:
        response = _REQUEST_ONCE(self, url, method, data, headers, json, stream)
        token = isinstance(self.auth, oras.auth.TokenAuth) and self.auth.token
        if response.status_code == 401 and token:
            # oras resends the token it has, which a registry refuses for a new
            # scope (pull, then push): drop it so the challenge's scope is asked for.
            response.close()
            self.auth.token = None
            response = _REQUEST_ONCE(self, url, method, data, headers, json, stream)
        accepted = response.status_code in (202, 204)
        if method == "PATCH" and accepted and self.on_chunk and isinstance(data, bytes):
            self.on_chunk(len(data))
        return response


def _reason(err: BaseException) -> str:
    """The useful end of a requests error: "[Errno 111] Connection refused"."""
    text = str(err)
    found = re.findall(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return str(found[-1]).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text or type(err).__name__


def _registry_says(response: requests.Response) -> str:
    """The registry's own error messages, if it sent the JSON errors form."""
    try:
        errors = response.json().get("errors") or []
        said = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
    except (ValueError, AttributeError):
        said = []
    return "; ".join(s for s in said if s) or f"HTTP {response.status_code} {response.reason}"


class _Remote:
    """One repository of one registry, through oras, with its errors translated."""

    def __init__(self, ref: Reference, *, insecure: bool) -> None:
        self.ref = ref
        self.place = f"{ref.host}/{ref.repository}"
        plain = insecure or is_loopback(ref.host)
        self.client = _Client(ref.host, plain)
        container = oras.container.Container(f"{ref.repository}:{ref.tag}", registry=ref.host)
        # oras's parser takes a first component with a dot for a registry host.
        namespace, _, name = ref.repository.rpartition("/")
        container.registry, container.namespace, container.repository = (
            ref.host,
            namespace or None,
            name,
        )
        self.container = container
        self.base = f"{self.client.prefix}://{ref.host}/v2/{ref.repository}"
        self.credentials: _Credentials | None = None
        self._connect()

    # -------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn what requests and oras raise into a RegistryError about ``what``."""
        try:
            yield
        except requests.exceptions.SSLError as err:
            raise RegistryError(
                f"TLS with registry {self.ref.host} failed while {what}: {_reason(err)}",
                place=self.place,
                hint="trust its certificate, or pass insecure if it speaks plain HTTP",
            ) from err
        except requests.RequestException as err:
            if what == _CONNECTING:
                raise RegistryError(
                    f"cannot reach registry {self.ref.host}: {_reason(err)}",
                    place=self.place,
                    hint="check that it runs, and the host and port in the reference",
                ) from err
            raise RegistryError(
                f"lost registry {self.ref.host} while {what}: {_reason(err)}",
                place=self.place,
                hint="check that it still runs; a pull run again resumes",
            ) from err
        except (ValueError, oras.auth.AuthenticationException) as err:
            # oras raises ValueError for an auth challenge it cannot answer and for
            # a refused chunk of an upload.
            if "authentication" in str(err).lower():
                raise self._refused() from err
            raise RegistryError(
                f"registry {self.ref.host} failed while {what}: {err}", place=self.place
            ) from err

    def _refused(self) -> RegistryError:
        if self.credentials is None:
            message = f"registry {self.ref.host} wants credentials and none were found"
        else:
            message = (
                f"registry {self.ref.host} refused the credentials from {self.credentials.source}"
            )
        return RegistryError(
            message,
            place=self.place,
            hint=f"credentials are read from {credential_places()}",
        )

    def _check(self, response: requests.Response, what: str, ok: tuple[int, ...]) -> None:
        if response.status_code in ok:
            return
        if response.status_code == 401:
            raise self._refused()
        if response.status_code == 403:
            raise RegistryError(
                f"registry {self.ref.host} denied {what}: {_registry_says(response)}",
                place=self.place,
                hint=f"the account from {self.credentials.source if self.credentials else '(none)'}"
                f" needs access to {self.ref.repository}",
            )
        raise RegistryError(
            f"registry {self.ref.host} failed {what}: {_registry_says(response)}",
            place=self.place,
        )

    def _connect(self) -> None:
        """Ask ``/v2/`` who we must be, and set oras's auth backend to match:
        basic for a Basic challenge (sent with every request, once verified), token
        for a Bearer one (oras asks the realm for a token per scope)."""
        url = f"{self.client.prefix}://{self.ref.host}/v2/"
        session = self.client.session
        with self._guard(_CONNECTING):
            first = session.request("GET", url, timeout=PING_TIMEOUT, verify=True)
        self.credentials = _credentials(self.ref)
        if first.status_code == 200:
            return
        if first.status_code != 401:
            self._check(first, "the API check (GET /v2/)", (200,))
        scheme = first.headers.get("Www-Authenticate", "").split(" ", 1)[0].lower()
        creds = self.credentials
        if scheme == "basic":
            if creds is None:
                raise self._refused()
            backend = oras.auth.get_auth_backend(
                "basic", session, self.client.prefix == "http", tls_verify=True
            )
            backend.set_basic_auth(creds.username, creds.password)
            self.client.auth = backend
            # On every request from the start, rather than each one sent twice (once
            # to be refused): a chunk of a blob is megabytes.
            session.headers.update(backend.get_auth_header())
            with self._guard("logging in"):
                again = session.request("GET", url, timeout=PING_TIMEOUT, verify=True)
            self._check(again, "logging in", (200,))
        elif scheme == "bearer":
            if creds is not None:
                self.client.auth.set_basic_auth(creds.username, creds.password)
        else:
            raise RegistryError(
                f"registry {self.ref.host} asks for {scheme or 'an unnamed'} authentication",
                place=self.place,
                hint="only Basic and Bearer challenges are supported",
            )

    # -------------------------------------------------------------- manifests

    def get_manifest(self, reference: str, *, missing_ok: bool = False) -> tuple[bytes, str] | None:
        """A manifest's exact bytes and media type, by tag or digest; None when the
        registry has none and ``missing_ok``."""
        what = f"fetching manifest {reference}"
        with self._guard(what):
            response: requests.Response = self.client.do_request(
                f"{self.base}/manifests/{reference}", "GET", headers={"Accept": ACCEPT}
            )
            if response.status_code == 404:
                if missing_ok:
                    return None
                if _DIGEST.fullmatch(reference):
                    raise RegistryError(
                        f"registry {self.ref.host} has no manifest {reference}",
                        place=self.place,
                        hint="the content under the tag is incomplete: push it again",
                    )
                raise RegistryError(
                    f"no such tag: {self.ref.repository}:{reference} is not on {self.ref.host}",
                    place=self.place,
                    hint=f"list the tags with: skopeo list-tags docker://{self.place}",
                )
            self._check(response, what, (200,))
            if int(response.headers.get("Content-Length") or 0) > MAX_MANIFEST:
                raise RegistryError(f"manifest {reference} is larger than 4 MiB", place=self.place)
            data: bytes = response.content
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        said = response.headers.get("Docker-Content-Digest")
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if said and said != got:
            raise RegistryError(
                f"manifest {reference} from {self.ref.host} has digest {got},"
                f" the registry says {said}",
                place=self.place,
            )
        return data, media_type

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> requests.Response:
        """Upload a manifest's exact bytes under a digest or a tag."""
        what = f"uploading manifest {reference}"
        with self._guard(what):
            response: requests.Response = self.client.do_request(
                f"{self.base}/manifests/{reference}",
                "PUT",
                data=data,
                headers={"Content-Type": media_type},
            )
        self._check(response, what, (200, 201, 202))
        said = response.headers.get("Docker-Content-Digest")
        ours = "sha256:" + hashlib.sha256(data).hexdigest()
        if said and said != ours:
            raise RegistryError(
                f"registry {self.ref.host} stored manifest {reference} as {said}, not {ours}",
                place=self.place,
                hint="the registry rewrote the manifest; digests (and signatures) would break",
            )
        return response

    def referrers(self, digest: str) -> list[Json]:
        """Descriptors of the manifests whose subject is ``digest``: the referrers
        API, else the fallback tag ``sha256-<hex>``."""
        what = f"listing referrers of {digest}"
        with self._guard(what):
            response: requests.Response = self.client.do_request(
                f"{self.base}/referrers/{digest}", "GET", headers={"Accept": INDEX}
            )
        if response.status_code == 401:
            raise self._refused()
        if response.status_code == 200:
            with contextlib.suppress(ValueError):
                listed = response.json()
                if isinstance(listed, dict) and isinstance(listed.get("manifests"), list):
                    return [d for d in listed["manifests"] if isinstance(d, dict)]
        found = self.get_manifest(_fallback_tag(digest), missing_ok=True)
        if found is None:
            return []
        index = _parse_json(found[0], f"referrers tag of {digest}", self.place)
        manifests = index.get("manifests")
        return [d for d in manifests if isinstance(d, dict)] if isinstance(manifests, list) else []

    # -------------------------------------------------------------- blobs

    def repositories(self) -> list[str]:
        """The registry's other repositories (its catalog, the first
        ``MAX_MOUNT_SOURCES``), where a blob may be already; none when the registry
        does not list them to this account."""
        url = f"{self.client.prefix}://{self.ref.host}/v2/_catalog?n={MAX_MOUNT_SOURCES}"
        try:
            with self._guard("listing repositories"):
                response: requests.Response = self.client.do_request(url, "GET")
            names = response.json().get("repositories") if response.status_code == 200 else []
        except (RegistryError, ValueError, AttributeError):
            return []
        if not isinstance(names, list):
            return []
        return [
            name
            for name in names
            if isinstance(name, str) and name != self.ref.repository and _REPOSITORY.fullmatch(name)
        ]

    def mount_blob(self, digest: str, sources: list[str]) -> str | None:
        """Mount a blob that another repository of the registry has (the
        distribution spec's cross-repository mount) instead of sending it: the
        repository it came from, or None when none would give it."""
        for source in sources:
            head_url = f"{self.client.prefix}://{self.ref.host}/v2/{source}/blobs/{digest}"
            mount_url = f"{self.base}/blobs/uploads/?mount={digest}&from={source}"
            try:
                with self._guard(f"looking for blob {digest} in {source}"):
                    head: requests.Response = self.client.do_request(head_url, "HEAD")
                    if head.status_code != 200:
                        continue
                    response: requests.Response = self.client.do_request(mount_url, "POST")
            except RegistryError:
                continue
            if response.status_code == 201:
                return source
            # 202: the registry would not mount and opened an upload instead.
            if response.status_code == 202 and (location := response.headers.get("Location")):
                if location.startswith("/"):
                    location = f"{self.client.prefix}://{self.ref.host}{location}"
                with contextlib.suppress(RegistryError), self._guard("cancelling an upload"):
                    self.client.do_request(location, "DELETE")
        return None

    def has_blob(self, digest: str) -> bool:
        with self._guard(f"checking blob {digest}"):
            return bool(self.client.blob_exists({"digest": digest}, self.container))

    def upload_blob(self, path: Path, descriptor: Json, progress: Progress | None) -> None:
        """Send a blob in chunks read from ``path`` (oras's chunked upload)."""
        digest, size = descriptor["digest"], int(descriptor["size"])
        name = _name(descriptor)
        done = 0

        def advance(length: int) -> None:
            nonlocal done
            done += length
            if progress and done < size:
                progress(name, done, size)

        layer = {"digest": digest, "size": size, "mediaType": descriptor.get("mediaType", "")}
        what = f"uploading blob {digest}"
        self.client.on_chunk = advance
        try:
            with self._guard(what):
                response: requests.Response = self.client.chunked_upload(
                    str(path), self.container, layer, chunk_size=UPLOAD_CHUNK
                )
        finally:
            self.client.on_chunk = None
        self._check(response, what, (201, 202, 204))
        if progress:
            progress(name, size, size)

    def open_blob(self, digest: str, start: int) -> requests.Response:
        """A streamed GET of a blob, from byte ``start`` on when above 0."""
        what = f"fetching blob {digest}"
        with self._guard(what):
            if start:
                response: requests.Response = self.client.do_request(
                    f"{self.client.prefix}://{self.container.get_blob_url(digest)}",
                    "GET",
                    headers={"Range": f"bytes={start}-"},
                    stream=True,
                )
            else:
                response = self.client.get_blob(self.container, digest, stream=True)
        if response.status_code == 404:
            response.close()
            raise RegistryError(
                f"registry {self.ref.host} has no blob {digest}, which a manifest lists",
                place=self.place,
                hint="the content under the tag is incomplete: push it again",
            )
        if response.status_code not in (200, 206):
            response.close()
            self._check(response, what, (200, 206))
        return response


def _fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag schema: ``sha256-<hex>``."""
    return digest.replace(":", "-", 1)


# ------------------------------------------------------------------ layouts


def _parse_json(data: bytes, what: str, place: str) -> Json:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise RegistryError(f"{what} is not JSON: {err}", place=place) from err
    if not isinstance(value, dict):
        raise RegistryError(f"{what} is not a JSON object", place=place)
    return value


def _hex(digest: object, place: str) -> str:
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise RegistryError(
            f"{digest!r} is not a sha256 digest",
            place=place,
            hint="only sha256:<64 hex> digests are supported",
        )
    return match.group(1)


def _size(descriptor: Json, place: str) -> int:
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(
            f"descriptor of {descriptor.get('digest')} has no valid size", place=place
        )
    return size


def _name(descriptor: Json) -> str:
    """What ``progress`` calls a blob: its title annotation, else its digest."""
    annotations = descriptor.get("annotations")
    title = annotations.get(TITLE) if isinstance(annotations, dict) else None
    return title if isinstance(title, str) and title else str(descriptor["digest"])


@dataclass(frozen=True)
class _Manifest:
    """A manifest or image index, its bytes exact."""

    digest: str
    media_type: str
    data: bytes
    body: Json

    @property
    def is_index(self) -> bool:
        return "manifests" in self.body or self.media_type in (INDEX, DOCKER_LIST)

    def children(self) -> list[Json]:
        listed = self.body.get("manifests") if self.is_index else None
        return [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []

    def blobs(self) -> list[Json]:
        if self.is_index:
            return []
        found = [self.body.get("config")]
        layers = self.body.get("layers")
        if isinstance(layers, list):
            found.extend(layers)
        return [d for d in found if isinstance(d, dict)]

    def subject(self) -> str | None:
        subject = self.body.get("subject")
        digest = subject.get("digest") if isinstance(subject, dict) else None
        return digest if isinstance(digest, str) else None

    def descriptor(self, *, with_subject: bool) -> Json:
        """This manifest as an index entry; a referrer's names its artifact type."""
        entry: Json = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        config = self.body.get("config")
        artifact = self.body.get("artifactType") or (
            config.get("mediaType") if isinstance(config, dict) and self.subject() else None
        )
        if artifact:
            entry["artifactType"] = artifact
        if isinstance(self.body.get("annotations"), dict) and self.body["annotations"]:
            entry["annotations"] = dict(self.body["annotations"])
        if with_subject and isinstance(self.body.get("subject"), dict):
            entry["subject"] = dict(self.body["subject"])
        return entry


def _manifest(data: bytes, descriptor: Json, place: str, fallback_type: str = "") -> _Manifest:
    """Check bytes against their descriptor and parse them."""
    digest = str(descriptor["digest"])
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise RegistryError(f"manifest {digest} has digest {got}", place=place)
    if "size" in descriptor and _size(descriptor, place) != len(data):
        raise RegistryError(
            f"manifest {digest} is {len(data)} bytes, its descriptor says {descriptor['size']}",
            place=place,
        )
    body = _parse_json(data, f"manifest {digest}", place)
    media_type = body.get("mediaType") or descriptor.get("mediaType") or fallback_type
    if not isinstance(media_type, str) or not media_type:
        raise RegistryError(f"manifest {digest} names no media type", place=place)
    return _Manifest(digest, media_type, data, body)


@dataclass
class _Tree:
    """A manifest and what it reaches: manifests children first, blobs once each."""

    manifests: list[_Manifest] = field(default_factory=list)
    blobs: list[Json] = field(default_factory=list)
    digests: set[str] = field(default_factory=set)

    @property
    def top(self) -> _Manifest:
        return self.manifests[-1]

    def add_blob(self, descriptor: Json) -> None:
        if descriptor["digest"] not in self.digests:
            self.digests.add(descriptor["digest"])
            self.blobs.append(descriptor)

    def manifest_digests(self) -> set[str]:
        return {m.digest for m in self.manifests}


def _walk(
    top: Json, load: Callable[[Json], _Manifest], place: str, tree: _Tree | None = None
) -> _Tree:
    """Load ``top`` and every manifest under it with ``load``, depth first."""
    tree = tree or _Tree()

    def visit(descriptor: Json, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise RegistryError(f"image indexes nest deeper than {MAX_DEPTH}", place=place)
        _hex(descriptor.get("digest"), place)
        if descriptor["digest"] in tree.digests:
            return
        manifest = load(descriptor)
        for child in manifest.children():
            visit(child, depth + 1)
        for blob in manifest.blobs():
            _hex(blob.get("digest"), place)
            _size(blob, place)
            tree.add_blob(blob)
        tree.digests.add(manifest.digest)
        tree.manifests.append(manifest)

    visit(top, 0)
    return tree


class _Layout:
    """An OCI image layout folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.place = str(root)
        self.blobs = root / "blobs" / "sha256"

    def blob(self, digest: object) -> Path:
        return self.blobs / _hex(digest, self.place)

    def read_index(self) -> Json:
        path = self.root / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise RegistryError(
                "not an OCI image layout: no index.json",
                place=self.place,
                hint="pack the lab first, or name the layout folder",
            ) from err
        except OSError as err:
            raise RegistryError(
                f"cannot read index.json: {err.strerror}", place=self.place
            ) from err
        index = _parse_json(data, "index.json", self.place)
        if not isinstance(index.get("manifests"), list):
            raise RegistryError("index.json has no manifests list", place=self.place)
        return index

    def entries(self) -> list[Json]:
        return [e for e in self.read_index()["manifests"] if isinstance(e, dict)]

    def load(self, descriptor: Json) -> _Manifest:
        path = self.blob(descriptor.get("digest"))
        try:
            if path.stat().st_size > MAX_MANIFEST:
                raise RegistryError(
                    f"manifest {descriptor['digest']} is larger than 4 MiB", place=self.place
                )
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise _lacks(f"manifest {descriptor['digest']}", self.place) from err
        except OSError as err:
            raise RegistryError(f"cannot read {path}: {err.strerror}", place=self.place) from err
        return _manifest(data, descriptor, self.place)

    def cached(self, descriptor: Json) -> _Manifest | None:
        """A manifest already here with the right bytes, else None."""
        try:
            return self.load(descriptor)
        except RegistryError:
            return None

    def has_blob(self, descriptor: Json) -> bool:
        """Whether a blob is here with the right size and digest."""
        path = self.blob(descriptor["digest"])
        try:
            if path.stat().st_size != int(descriptor["size"]):
                return False
            return bool("sha256:" + file_digest(path) == descriptor["digest"])
        except OSError:
            return False

    def prepare(self) -> None:
        """Make the folder a layout if it is not one yet."""
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            marker = self.root / "oci-layout"
            if marker.exists():
                version = _parse_json(marker.read_bytes(), "oci-layout", self.place)
                if version.get("imageLayoutVersion") != LAYOUT_VERSION:
                    raise RegistryError(
                        f"unknown image layout version {version.get('imageLayoutVersion')!r}",
                        place=self.place,
                        hint="pull into another folder",
                    )
            else:
                write_atomic(marker, b'{"imageLayoutVersion": "1.0.0"}\n')
            if not (self.root / "index.json").exists():
                self.write_index([])
            else:
                self.read_index()
        except OSError as err:
            raise RegistryError(
                f"cannot make the layout: {err.strerror}", place=self.place
            ) from err

    def write_index(self, entries: list[Json]) -> None:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}
        write_atomic(self.root / "index.json", (json.dumps(index, indent=2) + "\n").encode())

    def store_manifest(self, manifest: _Manifest) -> None:
        path = self.blob(manifest.digest)
        with contextlib.suppress(OSError):
            if path.read_bytes() == manifest.data:
                return
        write_atomic(path, manifest.data)


# ------------------------------------------------------------------ push


def _ref_name(entry: Json) -> str | None:
    annotations = entry.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def _tagged(layout: _Layout, tag: str) -> Json:
    entries = layout.entries()
    for entry in entries:
        if _ref_name(entry) == tag:
            return entry
    names = sorted(n for n in map(_ref_name, entries) if n is not None)
    raise RegistryError(
        f"the layout has no entry named {tag!r}",
        place=layout.place,
        hint=f"its names: {', '.join(names)}" if names else "its index.json names no entry",
    )


def _local_referrers(layout: _Layout, tree: _Tree, skip: str) -> list[_Tree]:
    """The trees of the manifests in ``index.json`` whose subject is in ``tree`` or
    in a referrer found before (a signature of a signature), in index order."""
    found: list[_Tree] = []
    subjects = tree.manifest_digests()
    candidates = [e for e in layout.entries() if e.get("digest") != skip]
    grew = True
    while grew:
        grew = False
        for entry in candidates:
            digest = entry.get("digest")
            if digest in subjects or not isinstance(digest, str):
                continue
            manifest = layout.cached(entry) if _DIGEST.fullmatch(digest) else None
            if manifest is None or manifest.subject() not in subjects:
                continue
            referrer = _walk(entry, layout.load, layout.place)
            found.append(referrer)
            subjects |= referrer.manifest_digests()
            grew = True
    return found


def push(
    layout: Path,
    tag: str,
    ref: str,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
) -> PushResult:
    """Push the entry ``tag`` of the layout, with its referrers, to ``ref``.

    Blobs the registry has are not sent again. Manifests go after what they list:
    children by digest, the top by the tag of ``ref``, then each referrer by
    digest, and where the registry has no referrers API (no ``OCI-Subject`` in
    its answer) the fallback tag ``sha256-<hex of subject>`` is updated.
    """
    target = parse_ref(ref)
    local = _Layout(layout)
    top = _tagged(local, tag)
    tree = _walk(top, local.load, local.place)
    referrers = _local_referrers(local, tree, top["digest"])

    blobs: dict[str, Json] = {}
    for part in (tree, *referrers):
        for blob in part.blobs:
            blobs.setdefault(blob["digest"], blob)
    sizes: dict[str, int] = {}
    for digest, blob in blobs.items():
        path = local.blob(digest)
        try:
            sizes[digest] = path.stat().st_size
        except FileNotFoundError as err:
            raise _lacks(f"blob {digest}", local.place) from err
        if sizes[digest] != blob["size"]:
            raise RegistryError(
                f"blob {digest} is {sizes[digest]} bytes, its descriptor says {blob['size']}",
                place=local.place,
            )

    remote = _Remote(target, insecure=insecure)
    sent = sent_bytes = skipped = skipped_bytes = mounted = mounted_bytes = 0
    sources: list[str] | None = None
    for digest, blob in blobs.items():
        size = sizes[digest]
        if remote.has_blob(digest):
            skipped, skipped_bytes = skipped + 1, skipped_bytes + size
            log.detail(f"{digest}: already on {target.host}")
            if progress:
                progress(_name(blob), size, size)
            continue
        if sources is None:
            sources = remote.repositories()
        if (source := remote.mount_blob(digest, sources)) is not None:
            mounted, mounted_bytes = mounted + 1, mounted_bytes + size
            log.detail(f"{digest}: mounted from {source}")
            if progress:
                progress(_name(blob), size, size)
            continue
        remote.upload_blob(local.blob(digest), blob, progress)
        sent, sent_bytes = sent + 1, sent_bytes + size
        log.detail(f"{digest}: sent {size} bytes")

    # Any manifest with a subject (a referrer; the tagged one may be one too) is
    # listed under the fallback tag of its subject unless the registry says, with
    # OCI-Subject, that its referrers API has taken it.
    fallback: dict[str, list[Json]] = {}
    pushes = [(m, m.digest) for m in tree.manifests[:-1]] + [(tree.top, target.tag)]
    pushes += [(m, m.digest) for referrer in referrers for m in referrer.manifests]
    for manifest, reference in pushes:
        response = remote.put_manifest(reference, manifest.data, manifest.media_type)
        subject = manifest.subject()
        if subject and not response.headers.get("OCI-Subject"):
            fallback.setdefault(subject, []).append(manifest.descriptor(with_subject=False))
    for subject, descriptors in fallback.items():
        _merge_fallback_tag(remote, subject, descriptors)

    return PushResult(
        digest=tree.top.digest,
        sent_blobs=sent,
        sent_bytes=sent_bytes,
        skipped_blobs=skipped,
        skipped_bytes=skipped_bytes,
        mounted_blobs=mounted,
        mounted_bytes=mounted_bytes,
        referrers=tuple(r.top.digest for r in referrers),
    )


def _merge_fallback_tag(remote: _Remote, subject: str, descriptors: list[Json]) -> None:
    """Add ``descriptors`` to the image index under the tag ``sha256-<hex>``."""
    tag = _fallback_tag(subject)
    found = remote.get_manifest(tag, missing_ok=True)
    listed: list[Json] = []
    if found is not None:
        index = _parse_json(found[0], f"referrers tag {tag}", remote.place)
        if isinstance(index.get("manifests"), list):
            listed = [d for d in index["manifests"] if isinstance(d, dict)]
    known = {d.get("digest") for d in listed}
    added = [d for d in descriptors if d["digest"] not in known]
    if not added:
        return
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": listed + added}
    remote.put_manifest(tag, json.dumps(index, separators=(",", ":")).encode(), INDEX)
    log.detail(f"referrers tag {tag}: {len(listed) + len(added)} referrers")


# ------------------------------------------------------------------ pull


def _open_partial(path: Path, place: str) -> IO[bytes]:
    """The temporary file of a download, locked so two pulls cannot write it at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    handle = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise RegistryError(
                f"another pull is writing {path.name}", place=place, hint="wait for it to end"
            ) from err
        raise
    return handle


def _fetch_blob(remote: _Remote, layout: _Layout, blob: Json, progress: Progress | None) -> int:
    """Stream a blob into ``<hex>.partial`` beside its place, check it, rename it
    into place; return the bytes fetched. A partial file left by an interrupted
    pull is continued (an HTTP range) when the registry allows; if the result is
    wrong, the whole blob is fetched once more before giving up."""
    digest, size = blob["digest"], int(blob["size"])
    final = layout.blob(digest)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    try:
        handle = _open_partial(partial, layout.place)
    except OSError as err:
        raise RegistryError(f"cannot write {partial}: {err.strerror}", place=layout.place) from err
    fetched = 0
    with handle:
        for resume in (True, False):
            hasher = hashlib.sha256()
            have = 0
            if resume:
                while chunk := handle.read(DOWNLOAD_CHUNK):
                    hasher.update(chunk)
                    have += len(chunk)
            if not resume or have > size:
                handle.seek(0)
                handle.truncate()
                hasher, have = hashlib.sha256(), 0
            resumed = have > 0
            if have < size:
                try:
                    have, hasher, got = _stream_into(handle, remote, blob, have, hasher, progress)
                except RegistryError:
                    if handle.tell() == 0:
                        partial.unlink(missing_ok=True)
                    raise
                fetched += got
            handle.flush()
            os.fsync(handle.fileno())
            if have == size and "sha256:" + hasher.hexdigest() == digest:
                os.replace(partial, final)
                break
            if not resumed:
                partial.unlink(missing_ok=True)
                found = f"{have} bytes" if have != size else "sha256:" + hasher.hexdigest()
                raise RegistryError(
                    f"blob {digest} from {remote.ref.host} does not match its descriptor:"
                    f" got {found}",
                    place=remote.place,
                    hint="the registry's copy is damaged: push the artifact again",
                )
            log.detail(f"{digest}: the resumed download is wrong; fetching it whole")
    if progress:
        progress(_name(blob), size, size)
    return fetched


def _stream_into(
    handle: IO[bytes],
    remote: _Remote,
    blob: Json,
    have: int,
    hasher: Any,
    progress: Progress | None,
) -> tuple[int, Any, int]:
    """Append the blob from byte ``have`` on (or all of it, if the registry ignores
    the range) to ``handle``; return the bytes now there, their hash, the bytes
    fetched. Stops at one byte more than the blob's size."""
    digest, size, name = blob["digest"], int(blob["size"]), _name(blob)
    fetched = 0
    with remote.open_blob(digest, have) as response:
        ranged = response.headers.get("Content-Range", "")
        if have and not (response.status_code == 206 and ranged.startswith(f"bytes {have}-")):
            # The registry sent the whole blob, not the rest: start over.
            handle.seek(0)
            handle.truncate()
            hasher, have = hashlib.sha256(), 0
        handle.seek(have)
        try:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                if have + len(chunk) > size:
                    return have + len(chunk), hasher, fetched
                handle.write(chunk)
                hasher.update(chunk)
                have += len(chunk)
                fetched += len(chunk)
                if progress:
                    progress(name, have, size)
        except requests.RequestException as err:
            handle.flush()
            raise RegistryError(
                f"lost registry {remote.ref.host} while fetching blob {digest}: {_reason(err)}",
                place=remote.place,
                hint="pull again: it resumes where this one stopped",
            ) from err
    return have, hasher, fetched


def _remote_loader(remote: _Remote, layout: _Layout) -> Callable[[Json], _Manifest]:
    """Load a manifest from the layout when it is there intact, else fetch and store it."""

    def load(descriptor: Json) -> _Manifest:
        manifest = layout.cached(descriptor)
        if manifest is None:
            got = remote.get_manifest(str(descriptor["digest"]))
            assert got is not None
            data, media_type = got
            manifest = _manifest(data, descriptor, remote.place, media_type)
            layout.store_manifest(manifest)
        return manifest

    return load


def pull(
    ref: str,
    layout: Path,
    *,
    tag: str | None = None,
    insecure: bool = False,
    progress: Progress | None = None,
) -> PullResult:
    """Pull ``ref`` and its referrers into the layout (made if missing), listed in
    ``index.json`` under ``tag`` (by default the tag of ``ref``).

    Blobs already there with the right digest are kept; the rest are streamed to a
    temporary file, checked and renamed into place, so an interrupted pull resumes.
    """
    target = parse_ref(ref)
    name = target.tag if tag is None else tag
    if not name:
        raise RegistryError("an empty tag name", place=str(layout), hint="name a tag or none")
    local = _Layout(layout)
    remote = _Remote(target, insecure=insecure)
    local.prepare()

    got = remote.get_manifest(target.tag)
    assert got is not None
    data, media_type = got
    top_descriptor: Json = {"digest": "sha256:" + hashlib.sha256(data).hexdigest()}
    top = _manifest(data, top_descriptor, remote.place, media_type)
    local.store_manifest(top)
    load = _remote_loader(remote, local)

    def load_top(descriptor: Json) -> _Manifest:
        return top if descriptor["digest"] == top.digest else load(descriptor)

    tree = _walk({**top_descriptor, "size": len(data)}, load_top, remote.place)

    # Referrers of every manifest pulled, and theirs in turn.
    referrers: list[_Manifest] = []
    queue = [m.digest for m in tree.manifests]
    asked: set[str] = set()
    while queue:
        subject = queue.pop(0)
        if subject in asked:
            continue
        asked.add(subject)
        for descriptor in remote.referrers(subject):
            digest = descriptor.get("digest")
            if digest in tree.digests:
                continue
            _hex(digest, remote.place)
            referrer = load(descriptor)
            if referrer.subject() != subject:
                log.detail(f"{digest}: listed as a referrer of {subject}, but its subject differs")
                continue
            known = len(tree.manifests)
            _walk(descriptor, load, remote.place, tree)
            referrers.append(referrer)
            queue.extend(m.digest for m in tree.manifests[known:])

    fetched = fetched_bytes = reused = reused_bytes = 0
    for blob in tree.blobs:
        size = int(blob["size"])
        if local.has_blob(blob):
            reused, reused_bytes = reused + 1, reused_bytes + size
            if progress:
                progress(_name(blob), size, size)
            continue
        fetched_bytes += _fetch_blob(remote, local, blob, progress)
        fetched += 1
        log.detail(f"{blob['digest']}: fetched {size} bytes")

    entries = [e for e in local.entries() if _ref_name(e) != name]
    top_entry: Json = {"mediaType": top.media_type, "digest": top.digest, "size": len(top.data)}
    if isinstance(top.body.get("artifactType"), str):
        top_entry["artifactType"] = top.body["artifactType"]
    top_entry["annotations"] = {REF_NAME: name}
    entries.append(top_entry)
    listed = {e.get("digest") for e in entries if not _ref_name(e)}
    for referrer in referrers:
        if referrer.digest not in listed:
            entries.append(referrer.descriptor(with_subject=True))
            listed.add(referrer.digest)
    local.write_index(entries)

    return PullResult(
        digest=top.digest,
        tag=name,
        fetched_blobs=fetched,
        fetched_bytes=fetched_bytes,
        reused_blobs=reused,
        reused_bytes=reused_bytes,
        referrers=tuple(r.digest for r in referrers),
    )
