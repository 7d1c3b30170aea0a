"""A STAND-IN for the Kubernetes API server: just the REST calls DRA mode makes, over HTTP/1.1.

Not a real API server and not a general fake. It holds ResourceSlices (cluster-scoped) and
ResourceClaims (namespaced) of ``resource.k8s.io/v1`` and answers, as the real one does:

* ``GET .../resourceslices?fieldSelector=spec.nodeName=N,spec.driver=D`` (list, with the list's
  resourceVersion), and the same with ``watch=1``: a chunked stream of JSON events from that
  resourceVersion on, ``BOOKMARK``s on request, ending after ``timeoutSeconds``; a version older
  than the history it keeps gets an ``ERROR`` event with code 410 (Gone), like a compacted etcd;
* ``POST`` (409 AlreadyExists), ``PUT`` with ``metadata.resourceVersion`` (409 Conflict when it is
  stale, 404 when the slice is gone), ``DELETE``;
* ``GET .../namespaces/NS/resourceclaims/NAME``;
* bearer-token authentication (401), and the validation the real server applies to what we send
  (device names are DNS labels, attribute names C identifiers of at most 32 characters, string
  values at most 64, at most 128 devices and 32 attributes per device) as 422 Invalid;
* device taints as 1.36 has them (DRADeviceTaints, beta and on): a taint without ``timeAdded``
  gets the time it arrived, to the second (defaulting, before validation); key, effect and the
  limits (16 per device, 64 devices per slice when any device has taints) are validated.

Faults to inject: ``fail_next`` (the next requests answer with these statuses), ``delay`` (every
answer waits), ``forbid`` (RBAC: 403 with the real message for that verb and resource),
``conflict_next`` (the next update meets a concurrent writer). ``wipe`` deletes a node's slices
as the kubelet does when it starts. ``writes`` records every successful write with its time.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

GROUP = "/apis/resource.k8s.io/v1"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HISTORY = 1000
CLASSES = GROUP + "/deviceclasses"


@dataclass
class Write:
    at: float
    verb: str
    name: str
    obj: dict[str, Any] | None


@dataclass
class _Watch:
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]
    selector: dict[str, str]


@dataclass
class FakeApiServer:
    token: str = "stand-in-token"
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    delay: float = 0.0
    forbid: set[tuple[str, str]] = field(default_factory=set)  # (verb, plural)
    conflict_next: int = 0
    version: int = 100
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _watches: list[_Watch] = field(default_factory=list)
    # DeviceClasses (the dra-classes controller): their own store, history and watches.
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    class_history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _class_watches: list[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = field(default_factory=list)
    extended_resource_gate: bool = True  # False: drop spec.extendedResourceName, as 1.34/1.35 do
    _server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.scheme = "https" if tls else "http"

    async def stop(self) -> None:
        for watch in self._watches:
            watch.queue.put_nowait(None)
        for queue in self._class_watches:
            queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kubeconfig(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"""apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster: {{server: "{self.url}"}}
users:
- name: sdm
  user: {{token: {self.token}}}
contexts:
- name: sdm@stand-in
  context: {{cluster: stand-in, user: sdm}}
current-context: sdm@stand-in
""")
        return path

    # --- state helpers for tests -----------------------------------------------------------
    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((int(obj["metadata"]["resourceVersion"]), kind, obj))
        del self.history[:-HISTORY]
        for watch in self._watches:
            if _selected(obj, watch.selector):
                watch.queue.put_nowait((kind, obj))

    def add_claim(self, namespace: str, name: str, uid: str, results: list[dict[str, Any]]) -> None:
        self.claims[(namespace, name)] = {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"namespace": namespace, "name": name, "uid": uid, "resourceVersion": self._bump()},
            "spec": {"devices": {"requests": [{"name": r.get("request", "dev")} for r in results]}},
            "status": {"allocation": {"devices": {"results": results}}},
        }

    def wipe(self, node: str) -> int:
        """Delete the node's slices, as the kubelet does when it starts."""
        names = [n for n, s in self.slices.items() if s["spec"].get("nodeName") == node]
        for name in names:
            self._delete(name)
        return len(names)

    def edit(self, name: str, change: dict[str, Any]) -> None:
        """Another writer changes a slice (spec keys replaced)."""
        obj = json.loads(json.dumps(self.slices[name]))
        obj["spec"].update(change)
        obj["metadata"]["resourceVersion"] = self._bump()
        self.slices[name] = obj
        self._event("MODIFIED", obj)

    def devices(self, node: str | None = None) -> dict[str, dict[str, Any]]:
        """Every published device by name (of one node, or all)."""
        found = {}
        for obj in self.slices.values():
            if node is None or obj["spec"].get("nodeName") == node:
                for device in obj["spec"].get("devices") or ():
                    found[device["name"]] = device
        return found

    def _delete(self, name: str) -> None:
        obj = self.slices.pop(name)
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": self._bump()}}
        self._event("DELETED", obj)

    # --- HTTP ---------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.requests.append((method, target))
                if self.delay:
                    await asyncio.sleep(self.delay)
                url = urlsplit(target)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if query.get("watch") in ("1", "true") and method == "GET":
                    if url.path == CLASSES:
                        await self._watch_classes(writer, query, headers)
                    else:
                        await self._watch(writer, url.path, query, headers)
                    return
                if url.path == CLASSES or url.path.startswith(CLASSES + "/"):
                    status, answer = self._class_answer(method, url.path, headers, body)
                else:
                    status, answer = self._answer(method, url.path, query, headers, body)
                data = json.dumps(answer).encode()
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _check(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        # token "": clients authenticate with a TLS client certificate the server verified
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if self.fail_next:
            code = self.fail_next.pop(0)
            return code, _status(code, "InternalError", f"stand-in fault injection: {code}")
        plural = "resourceclaims" if "/resourceclaims" in path else "resourceslices"
        verb = {"POST": "create", "PUT": "update", "DELETE": "delete"}.get(method, "get")
        if method == "GET" and path.endswith("/resourceslices"):
            verb = "list"
        if (verb, plural) in self.forbid:
            return 403, _status(403, "Forbidden", f'{plural}.resource.k8s.io is forbidden: User '
                                f'"system:serviceaccount:sdm:smarter-device-manager" cannot {verb} resource '
                                f'"{plural}" in API group "resource.k8s.io" at the cluster scope')
        return None

    def _answer(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, Any]]:
        refused = self._check(method, path, headers)
        if refused is not None:
            return refused
        claim = re.fullmatch(GROUP + r"/namespaces/([^/]+)/resourceclaims/([^/]+)", path)
        if claim and method == "GET":
            found = self.claims.get((claim.group(1), claim.group(2)))
            if found is None:
                return 404, _status(404, "NotFound", f'resourceclaims.resource.k8s.io "{claim.group(2)}" '
                                    "not found")
            return 200, found
        if path == GROUP + "/resourceslices":
            if method == "GET":
                selector = _selector(query.get("fieldSelector", ""))
                return 200, {"kind": "ResourceSliceList", "apiVersion": "resource.k8s.io/v1",
                             "metadata": {"resourceVersion": str(self.version)},
                             "items": [s for s in self.slices.values() if _selected(s, selector)]}
            if method == "POST":
                obj = json.loads(body)
                name = obj["metadata"]["name"]
                if name in self.slices:
                    return 409, _status(409, "AlreadyExists", f'resourceslices.resource.k8s.io "{name}" '
                                        "already exists")
                return self._store("create", obj)
        single = re.fullmatch(GROUP + r"/resourceslices/([^/]+)", path)
        if single:
            name = single.group(1)
            if name not in self.slices:
                return 404, _status(404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found')
            if method == "GET":
                return 200, self.slices[name]
            if method == "DELETE":
                self._delete(name)
                self.writes.append(Write(time.monotonic(), "delete", name, None))
                return 200, _status(200, "", "deleted")
            if method == "PUT":
                obj = json.loads(body)
                held = self.slices[name]["metadata"]["resourceVersion"]
                if self.conflict_next:
                    self.conflict_next -= 1
                    self.edit(name, {})  # a concurrent writer got there first
                    held = self.slices[name]["metadata"]["resourceVersion"]
                if obj["metadata"].get("resourceVersion") != held:
                    return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on resourceslices'
                                        f'.resource.k8s.io "{name}": the object has been modified; please '
                                        "apply your changes to the latest version and try again")
                return self._store("update", obj)
        return 404, _status(404, "NotFound", f"the stand-in does not serve {method} {path}")

    def _store(self, verb: str, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        problems = _taint_problems(obj) + _invalid(obj)
        if problems:
            return 422, _status(422, "Invalid", "; ".join(problems))
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = self._bump()
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        self.slices[obj["metadata"]["name"]] = obj
        self.writes.append(Write(time.monotonic(), verb, obj["metadata"]["name"], obj))
        self._event("ADDED" if verb == "create" else "MODIFIED", obj)
        return 201 if verb == "create" else 200, obj

    async def _watch(self, writer: asyncio.StreamWriter, path: str, query: dict[str, str],
                     headers: dict[str, str]) -> None:
        refused = self._check("GET", path, headers)
        if refused is None and path != GROUP + "/resourceslices":
            refused = (404, _status(404, "NotFound", path))
        if refused is not None:
            data = json.dumps(refused[1]).encode()
            writer.write(f"HTTP/1.1 {refused[0]} X\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()
            return
        selector = _selector(query.get("fieldSelector", ""))
        watch = _Watch(asyncio.Queue(), selector)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        since = int(query.get("resourceVersion") or self.version)
        if self.history and since < self.history[0][0] - 1:
            _chunk(writer, {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        for version, kind, obj in self.history:
            if version > since and _selected(obj, selector):
                watch.queue.put_nowait((kind, obj))
        self._watches.append(watch)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "1800"))
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watch.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if item is None:
                    return
                _chunk(writer, {"type": item[0], "object": item[1]})
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self._watches.remove(watch)

    def drop_watches(self) -> None:
        """Cut every watch connection (a restarted API server)."""
        for watch in self._watches:
            watch.queue.put_nowait(None)
        for queue in self._class_watches:
            queue.put_nowait(None)

    # --- DeviceClasses (cluster-scoped): list, watch, get, create, update, delete ---------------
    # Kept apart from the slices' code above: its own store, history and watch queues.
    def put_slice(self, obj: dict[str, Any]) -> None:
        """Another node's daemon publishes (or replaces) a slice, validated like ours."""
        name = obj["metadata"]["name"]
        status, answer = self._store("update" if name in self.slices else "create",
                                     json.loads(json.dumps(obj)))
        assert status < 300, answer

    def remove_slice(self, name: str) -> None:
        self._delete(name)

    def put_class(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Somebody else (an administrator, another driver) creates or replaces a DeviceClass."""
        name = obj["metadata"]["name"]
        verb = "update" if name in self.classes else "create"
        if verb == "update":
            obj = {**obj, "metadata": {**obj["metadata"],
                                       "resourceVersion": self.classes[name]["metadata"]["resourceVersion"]}}
        status, answer = self._class_store(verb, json.loads(json.dumps(obj)))
        assert status < 300, answer
        return answer

    def _class_event(self, kind: str, obj: dict[str, Any]) -> None:
        self.class_history.append((int(obj["metadata"]["resourceVersion"]), kind, obj))
        del self.class_history[:-HISTORY]
        for queue in self._class_watches:
            queue.put_nowait((kind, obj))

    def _class_refused(self, method: str, path: str,
                       headers: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if self.fail_next:
            code = self.fail_next.pop(0)
            return code, _status(code, "InternalError", f"stand-in fault injection: {code}")
        verb = {"POST": "create", "PUT": "update", "DELETE": "delete"}.get(method, "get")
        if method == "GET" and path == CLASSES:
            verb = "list"
        if (verb, "deviceclasses") in self.forbid:
            return 403, _status(403, "Forbidden", 'deviceclasses.resource.k8s.io is forbidden: User '
                                '"system:serviceaccount:sdm:smarter-device-manager-dra-classes" cannot '
                                f'{verb} resource "deviceclasses" in API group "resource.k8s.io" at the '
                                "cluster scope")
        return None

    def _class_answer(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> tuple[int, dict[str, Any]]:
        refused = self._class_refused(method, path, headers)
        if refused is not None:
            return refused
        if path == CLASSES:
            if method == "GET":
                return 200, {"kind": "DeviceClassList", "apiVersion": "resource.k8s.io/v1",
                             "metadata": {"resourceVersion": str(self.version)},
                             "items": list(self.classes.values())}
            if method == "POST":
                obj = json.loads(body)
                name = obj.get("metadata", {}).get("name", "")
                if name in self.classes:
                    return 409, _status(409, "AlreadyExists", f'deviceclasses.resource.k8s.io "{name}" '
                                        "already exists")
                return self._class_store("create", obj)
        name = path.removeprefix(CLASSES + "/")
        if "/" in name or name not in self.classes:
            return 404, _status(404, "NotFound", f'deviceclasses.resource.k8s.io "{name}" not found')
        if method == "GET":
            return 200, self.classes[name]
        if method == "DELETE":
            obj = self.classes.pop(name)
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": self._bump()}}
            self._class_event("DELETED", obj)
            self.writes.append(Write(time.monotonic(), "delete", name, None))
            return 200, _status(200, "", "deleted")
        if method == "PUT":
            obj = json.loads(body)
            held = self.classes[name]["metadata"]["resourceVersion"]
            if obj.get("metadata", {}).get("resourceVersion") != held:
                return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on deviceclasses'
                                    f'.resource.k8s.io "{name}": the object has been modified; please '
                                    "apply your changes to the latest version and try again")
            return self._class_store("update", obj)
        return 405, _status(405, "MethodNotAllowed", f"{method} {path}")

    def _class_store(self, verb: str, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        problems = _invalid_class(obj)
        if problems:
            return 422, _status(422, "Invalid", "; ".join(problems))
        if not self.extended_resource_gate:
            obj.get("spec", {}).pop("extendedResourceName", None)
        meta = obj["metadata"]
        meta["resourceVersion"] = self._bump()
        meta.setdefault("uid", f"uid-class-{meta['name']}")
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.classes[meta["name"]] = obj
        self.writes.append(Write(time.monotonic(), verb, meta["name"], obj))
        self._class_event("ADDED" if verb == "create" else "MODIFIED", obj)
        return 201 if verb == "create" else 200, obj

    async def _watch_classes(self, writer: asyncio.StreamWriter, query: dict[str, str],
                             headers: dict[str, str]) -> None:
        refused = self._class_refused("GET", CLASSES + "/watch", headers)
        if refused is not None:
            data = json.dumps(refused[1]).encode()
            writer.write(f"HTTP/1.1 {refused[0]} X\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()
            return
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        since = int(query.get("resourceVersion") or self.version)
        if self.class_history and since < self.class_history[0][0] - 1:
            _chunk(writer, {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        for version, kind, obj in self.class_history:
            if version > since:
                queue.put_nowait((kind, obj))
        self._class_watches.append(queue)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "1800"))
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if item is None:
                    return
                _chunk(writer, {"type": item[0], "object": item[1]})
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self._class_watches.remove(queue)


def _chunk(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
    data = json.dumps(event).encode() + b"\n"
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}


def _selector(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _selected(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    spec = obj.get("spec") or {}
    return all(str(spec.get(key.removeprefix("spec."))) == value for key, value in selector.items())


def _invalid(obj: dict[str, Any]) -> list[str]:
    """The parts of the real validation that what we send could break."""
    problems = []
    spec = obj.get("spec") or {}
    devices = spec.get("devices") or []
    if len(devices) > 128:
        problems.append(f"spec.devices: Too many: {len(devices)}: must have at most 128 items")
    for number, device in enumerate(devices):
        where = f"spec.devices[{number}]"
        if not _LABEL.match(device.get("name", "")):
            problems.append(f"{where}.name: Invalid value: {device.get('name')!r}: not a DNS label")
        attributes = device.get("attributes") or {}
        if len(attributes) + len(device.get("capacity") or {}) > 32:
            problems.append(f"{where}: the total number of attributes and capacities must not exceed 32")
        for key, value in attributes.items():
            if len(key) > 32 or not _C_IDENTIFIER.match(key):
                problems.append(f"{where}.attributes[{key}]: not a C identifier of at most 32 characters")
            if len(value) != 1 or next(iter(value)) not in ("string", "int", "bool", "version"):
                problems.append(f"{where}.attributes[{key}]: exactly one of string, int, bool, version")
            elif isinstance(value.get("string"), str) and len(value["string"]) > 64:
                problems.append(f"{where}.attributes[{key}].string: Too long: may not be more than 64 bytes")
        if device.get("capacity") and not device.get("allowMultipleAllocations"):
            for key, cap in device["capacity"].items():
                if "requestPolicy" in cap:
                    problems.append(f"{where}.capacity[{key}].requestPolicy: needs allowMultipleAllocations")
    pool = spec.get("pool") or {}
    if int(pool.get("generation", 0)) < 0 or int(pool.get("resourceSliceCount", 0)) < 1:
        problems.append("spec.pool: generation >= 0 and resourceSliceCount >= 1 required")
    return problems


_TAINT_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _taint_problems(obj: dict[str, Any]) -> list[str]:
    """Default each taint's ``timeAdded`` as the server does (v1/defaults.go), then the taint rules
    of 1.36's validation (V:713-716, 845-853, 1505-1522)."""
    problems = []
    devices = (obj.get("spec") or {}).get("devices") or []
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for number, device in enumerate(devices):
        taints = device.get("taints") or []
        if len(taints) > 16:
            problems.append(f"spec.devices[{number}].taints: Too many: {len(taints)}: "
                            "must have at most 16 items")
        for index, taint in enumerate(taints):
            where = f"spec.devices[{number}].taints[{index}]"
            taint.setdefault("timeAdded", now)
            prefix, _, name = str(taint.get("key", "")).rpartition("/")
            if len(name) > 63 or not _TAINT_NAME.match(name) or (prefix and not _SUBDOMAIN.match(prefix)):
                problems.append(f"{where}.key: Invalid value: {taint.get('key')!r}: not a label key")
            if taint.get("effect") not in ("NoExecute", "NoSchedule", "None"):
                problems.append(f"{where}.effect: Unsupported value: {taint.get('effect')!r}: "
                                'supported values: "NoExecute", "NoSchedule", "None"')
    if any(d.get("taints") for d in devices) and len(devices) > 64:
        problems.append(f"spec.devices: Too many: {len(devices)}: must have at most 64 items")
    return problems


_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _invalid_class(obj: dict[str, Any]) -> list[str]:
    """The parts of the real DeviceClass validation that a controller could break."""
    problems = []
    name = str((obj.get("metadata") or {}).get("name", ""))
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain")
    spec = obj.get("spec") or {}
    selectors = spec.get("selectors") or []
    if len(selectors) > 32:
        problems.append("spec.selectors: Too many: must have at most 32 items")
    for number, selector in enumerate(selectors):
        expression = (selector.get("cel") or {}).get("expression")
        if not isinstance(expression, str) or not expression.strip():
            problems.append(f"spec.selectors[{number}].cel.expression: Required value")
        elif expression.count('"') % 2:
            problems.append(f"spec.selectors[{number}].cel.expression: compilation failed: "
                            "unterminated string")
    resource = spec.get("extendedResourceName")
    if resource is not None:
        domain, sep, short = str(resource).partition("/")
        if (not sep or "kubernetes.io" in domain or len("requests." + domain) > 253
                or not _SUBDOMAIN.match(domain) or not _QUALIFIED.match(short)):
            problems.append(f"spec.extendedResourceName: Invalid value: {resource!r}: must be a valid "
                            "extended resource name")
    return problems
