"""The Kubernetes API client of DRA mode: HTTP/1.1 and JSON over asyncio streams and ``ssl``.

Why not a client library: DRA mode must stay within 40 MiB RSS with 20 devices on a Raspberry
Pi. Measured on CPython 3.11 here (docs/decisions.md has the table), with asyncio, ssl, grpclib
and PyYAML loaded (23.6 MiB) and one list plus one watch running against a real API server:
lightkube 1.0.1 36.9 MiB (and it needs msgspec, a C extension with no 32-bit ARM wheel on
PyPI), lightkube 0.19.1 (pure Python, httpx) 36.2 MiB, kr8s 43 MiB and kubernetes_asyncio
72 MiB after the import alone; this module, doing the same, 27.2 MiB. The daemon's own code
takes about 3 MiB more, so a library would leave the target no headroom. What DRA mode needs is
small: create/update/delete/list/watch of its own ResourceSlices and get of ResourceClaims,
JSON bodies, bearer tokens or client certificates.

What it does, and why:

* **Credentials** from the ServiceAccount in a pod (``KUBERNETES_SERVICE_HOST``/``_PORT``, the
  token and CA under /var/run/secrets/kubernetes.io/serviceaccount; the token file is read
  again every minute because bound tokens rotate) or from a kubeconfig for tests and for running
  on a host (its current context: server, CA, bearer token or token file, client certificate;
  exec and auth-provider plugins are refused with a message, they would need subprocesses).
  Client certificates given inline are handed to ``ssl`` through a memfd, never the disk.
* **Requests** share a few keep-alive connections; a request that finds its reused connection
  closed by the server is sent once more on a new one. Every request has a deadline.
* **Watches** hold one connection each and yield decoded events as the chunked stream brings
  them; nothing polls, so an idle node costs no CPU.
* **Errors** are :class:`KubeError` with the HTTP status, the API's reason and a message for
  users: a 403 names the verb and resource the ServiceAccount lacks; an unreachable server says
  where it tried.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from smarter_device_manager import __version__

_T = TypeVar("_T")


async def within(awaitable: Awaitable[_T], seconds: float | None) -> _T:
    """``asyncio.wait_for`` without its Python 3.10/3.11 race: a cancellation that arrives as the
    awaited call completes is lost there (cpython#86296), and a daemon task told to stop went on
    watching. ``asyncio.timeout`` (3.11+) keeps it; 3.10 has only ``wait_for``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
USER_AGENT = f"smarter-device-manager/{__version__} (dra)"
REQUEST_TIMEOUT = 10.0
TOKEN_REFRESH = 60.0
MAX_IDLE = 4
_MAX_HEADER = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class KubeError(Exception):
    """An API call that failed. ``status`` 0 means no HTTP answer at all (unreachable, timeout)."""

    def __init__(self, status: int, reason: str, message: str, verb: str = "", resource: str = "") -> None:
        self.status = status
        self.reason = reason
        self.verb = verb
        self.resource = resource
        self.detail = message
        super().__init__(self._explain())

    def _explain(self) -> str:
        what = f"{self.verb} {self.resource}".strip()
        if self.status == 403:
            return (f"RBAC: the API server refused to {what} ({self.detail}); the daemon's "
                    f"ServiceAccount needs the verb '{self.verb}' on '{self.resource}' in its "
                    "ClusterRole (the chart's templates/dra-rbac.yaml)")
        if self.status == 401:
            return f"{what}: the API server did not accept our credentials ({self.detail})"
        if self.status == 0:
            return f"{what}: {self.detail}"
        return f"{what}: HTTP {self.status} {self.reason}: {self.detail}"

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def gone(self) -> bool:
        return self.status == 410


class ConfigError(Exception):
    """Credentials that cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class Cluster:
    """Where the API server is and how we prove who we are."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None = None
    token: str | None = None
    token_file: str | None = None
    source: str = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def _memfd_path(name: str, data: bytes) -> tuple[int, str]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd, f"/proc/self/fd/{fd}"


_Source = tuple[str | None, bytes | None]  # (file, inline data)


def _tls_context(ca_file: str | None, ca_data: bytes | None, insecure: bool, cert: _Source,
                 key: _Source) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=ca_file, cadata=ca_data.decode("ascii", "replace") if ca_data else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert_file, cert_data = cert
    key_file, key_data = key
    if cert_file or cert_data:
        opened: list[int] = []
        try:
            if cert_data is not None:
                fd, cert_file = _memfd_path("sdm-client-cert", cert_data)
                opened.append(fd)
            if key_data is not None:
                fd, key_file = _memfd_path("sdm-client-key", key_data)
                opened.append(fd)
            assert cert_file is not None
            context.load_cert_chain(cert_file, key_file)
        finally:
            for fd in opened:
                os.close(fd)
    return context


def in_cluster(sa_dir: str = SERVICE_ACCOUNT_DIR, env: dict[str, str] | None = None) -> Cluster:
    """The API server and credentials a pod's ServiceAccount gives it."""
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not in a pod (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT unset) and no "
                          "--kubeconfig given: the daemon cannot find the API server")
    token_file = os.path.join(sa_dir, "token")
    ca_file = os.path.join(sa_dir, "ca.crt")
    for path in (token_file, ca_file):
        if not os.path.isfile(path):
            raise ConfigError(f"{path} is missing: the pod needs its ServiceAccount token "
                              "(automountServiceAccountToken: true)")
    if not port.isdigit():
        raise ConfigError(f"KUBERNETES_SERVICE_PORT={port!r} is not a port number")
    try:
        context = _tls_context(ca_file, None, False, (None, None), (None, None))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{ca_file}: not a usable CA certificate: {exc}") from None
    return Cluster(host.strip("[]"), int(port), context, token_file=token_file,
                   source=f"in-cluster ServiceAccount ({sa_dir})")


def _b64(value: str, where: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where} is not valid base64") from None


def load_kubeconfig(path: str, context_name: str | None = None) -> Cluster:
    """The current (or named) context of a kubeconfig file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"kubeconfig {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"kubeconfig {path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig (expected a mapping)")
    base = os.path.dirname(os.path.abspath(path))

    def named(kind: str, name: str) -> dict[str, Any]:
        for entry in doc.get(kind + "s") or ():
            if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(kind), dict):
                return dict(entry[kind])
        raise ConfigError(f"kubeconfig {path}: no {kind} named {name!r}")

    def file(value: Any) -> str | None:
        return None if not value else os.path.join(base, str(value))

    wanted = context_name or doc.get("current-context")
    if not wanted:
        raise ConfigError(f"kubeconfig {path}: no current-context")
    context = named("context", str(wanted))
    cluster = named("cluster", str(context.get("cluster", "")))
    user = named("user", str(context.get("user", ""))) if context.get("user") else {}
    for unsupported in ("exec", "auth-provider"):
        if unsupported in user:
            raise ConfigError(f"kubeconfig {path}: user {context.get('user')!r} uses '{unsupported}', "
                              "which this client does not run; use a token or a client certificate")
    server = urlsplit(str(cluster.get("server", "")))
    if server.scheme not in ("http", "https") or not server.hostname:
        raise ConfigError(f"kubeconfig {path}: server {cluster.get('server')!r} is not an http(s) URL")
    tls = None
    if server.scheme == "https":
        try:
            tls = _tls_context(
                file(cluster.get("certificate-authority")),
                _b64(cluster["certificate-authority-data"], f"{path}: certificate-authority-data")
                if cluster.get("certificate-authority-data") else None,
                bool(cluster.get("insecure-skip-tls-verify")),
                (file(user.get("client-certificate")),
                 _b64(user["client-certificate-data"], f"{path}: client-certificate-data")
                 if user.get("client-certificate-data") else None),
                (file(user.get("client-key")),
                 _b64(user["client-key-data"], f"{path}: client-key-data")
                 if user.get("client-key-data") else None),
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"kubeconfig {path}: certificates unusable: {exc}") from None
    return Cluster(
        server.hostname, server.port or (443 if tls else 80), tls,
        server_hostname=cluster.get("tls-server-name") or None,
        token=user.get("token") or None, token_file=file(user.get("tokenFile")),
        source=f"kubeconfig {path} (context {wanted})",
    )


class _Response:
    __slots__ = ("body", "headers", "keep", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, keep: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.keep = keep


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > _MAX_HEADER:
        raise ConnectionError("response headers too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The payloads of a chunked body, as they arrive."""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent by the API server
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        total = 0
        async for chunk in _chunks(reader):
            total += len(chunk)
            if total > _MAX_BODY:
                raise ConnectionError("response body too large")
            parts.append(chunk)
        return b"".join(parts)
    length = int(headers.get("content-length", "0") or 0)
    if length > _MAX_BODY:
        raise ConnectionError("response body too large")
    return await reader.readexactly(length) if length else b""


def _status_error(status: int, body: bytes, verb: str, resource: str) -> KubeError:
    reason, message = "", body[:300].decode("utf-8", "replace").strip()
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            reason, message = str(doc.get("reason", "")), str(doc.get("message", message))
    except ValueError:
        pass
    return KubeError(status, reason or f"HTTP {status}", message or "(no message)", verb, resource)


class KubeClient:
    """A few keep-alive HTTP/1.1 connections to one API server."""

    def __init__(self, cluster: Cluster, timeout: float = REQUEST_TIMEOUT) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._token = cluster.token
        self._token_read = 0.0
        self._watches: set[asyncio.StreamWriter] = set()

    def _auth(self) -> str:
        cluster = self.cluster
        if cluster.token_file and time.monotonic() - self._token_read > TOKEN_REFRESH:
            try:
                with open(cluster.token_file, encoding="utf-8") as handle:
                    self._token = handle.read().strip()
                self._token_read = time.monotonic()
            except OSError as exc:
                if self._token is None:
                    raise KubeError(0, "NoToken", f"cannot read the token {cluster.token_file}: "
                                    f"{exc.strerror}") from None
        return f"Authorization: Bearer {self._token}\r\n" if self._token else ""

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        cluster = self.cluster
        return await asyncio.open_connection(
            cluster.host, cluster.port, ssl=cluster.tls, limit=_MAX_HEADER,
            server_hostname=(cluster.server_hostname or cluster.host) if cluster.tls else None)

    def _head(self, method: str, path: str, body: bytes | None) -> bytes:
        lines = (f"{method} {path} HTTP/1.1\r\nHost: {self.cluster.host}:{self.cluster.port}\r\n"
                 f"User-Agent: {USER_AGENT}\r\nAccept: application/json\r\n{self._auth()}")
        if body is not None:
            lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (lines + "\r\n").encode("latin-1")

    async def _exchange(self, method: str, path: str, body: bytes | None) -> _Response:
        for attempt in (0, 1):
            reused = bool(self._idle) and attempt == 0
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                writer.write(self._head(method, path, body) + (body or b""))
                await writer.drain()
                status, headers = await _read_head(reader)
                data = await _read_body(reader, headers)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                writer.close()
                if reused:  # the server closed an idle connection: once more on a new one
                    continue
                raise
            except BaseException:
                writer.close()
                raise
            keep = headers.get("connection", "").lower() != "close"
            if keep and len(self._idle) < MAX_IDLE:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return _Response(status, headers, data, keep)
        raise ConnectionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def request(self, method: str, path: str, body: Any = None, *, verb: str = "",
                      resource: str = "") -> Any:
        """One API call; the decoded JSON answer, or KubeError."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            response = await within(self._exchange(method, path, data), self.timeout)
        except asyncio.TimeoutError:
            raise KubeError(0, "Timeout", f"no answer from the API server {self.cluster.url} within "
                            f"{self.timeout:g} s", verb, resource) from None
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ssl.SSLError) as exc:
            raise KubeError(0, "Unreachable", f"cannot reach the API server {self.cluster.url}: "
                            f"{getattr(exc, 'strerror', None) or exc}", verb, resource) from None
        if response.status >= 400:
            raise _status_error(response.status, response.body, verb, resource)
        try:
            return json.loads(response.body) if response.body else {}
        except ValueError:
            raise KubeError(response.status, "BadResponse", "the answer is not JSON", verb,
                            resource) from None

    async def watch(self, path: str, params: dict[str, str], *, resource: str = "") -> AsyncIterator[Any]:
        """Events ``{"type": ..., "object": ...}`` of one watch request, until the server ends it.

        Raises KubeError if the watch cannot start; a stream cut later just ends the iteration
        (the caller watches again from the last resourceVersion it saw).
        """
        query = urlencode({**params, "watch": "1"})
        try:
            reader, writer = await within(self._connect(), self.timeout)
        except (asyncio.TimeoutError, OSError, ssl.SSLError) as exc:
            raise KubeError(0, "Unreachable", f"cannot reach the API server {self.cluster.url}: "
                            f"{getattr(exc, 'strerror', None) or exc or 'timeout'}", "watch",
                            resource) from None
        self._watches.add(writer)
        try:
            try:
                writer.write(self._head("GET", f"{path}?{query}", None))
                await writer.drain()
                status, headers = await within(_read_head(reader), self.timeout)
            except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                raise KubeError(0, "Unreachable", f"watch of {path} failed: {exc or 'timeout'}",
                                "watch", resource) from None
            if status >= 400:
                body = await within(_read_body(reader, headers), self.timeout)
                raise _status_error(status, body, "watch", resource)
            buffer = b""
            # The server ends the watch after timeoutSeconds; a connection that stays silent
            # well past that is dead (a partition, a half-open socket), and ends here too.
            idle = float(params.get("timeoutSeconds", 300)) + 30
            chunks = _chunks(reader)
            try:
                while True:
                    try:
                        chunk = await within(chunks.__anext__(), idle)
                    except StopAsyncIteration:
                        return
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield json.loads(line)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError,
                    ValueError):
                return
        finally:
            self._watches.discard(writer)
            writer.close()

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        for writer in list(self._watches):
            writer.close()
        self._idle.clear()


def path_of(group_version: str, plural: str, name: str = "", namespace: str = "") -> str:
    """``resource.k8s.io/v1``, ``resourceslices`` -> ``/apis/resource.k8s.io/v1/resourceslices``."""
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"{root}{where}/{plural}" + (f"/{quote(name, safe='')}" if name else "")
