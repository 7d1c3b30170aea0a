"""A STAND-IN for the Kubernetes API server: just the REST calls DRA mode makes, over HTTP/1.1.

Not a real API server and not a general fake. It holds ResourceSlices (cluster-scoped) and
ResourceClaims (namespaced) of ``resource.k8s.io/v1`` and answers, as the real one does:

* ``GET .../resourceslices?fieldSelector=spec.nodeName=N,spec.driver=D`` (list, with the list's
  resourceVersion), and the same with ``watch=1``: a chunked stream of JSON events from that
  resourceVersion on, ``BOOKMARK``s on request, ending after ``timeoutSeconds``; a version older
  than the history it keeps gets an ``ERROR`` event with code 410 (Gone), like a compacted etcd;
* ``POST`` (409 AlreadyExists), ``PUT`` with ``metadata.resourceVersion`` (409 Conflict when it is
  stale, 404 when the slice is gone), ``DELETE``;
* ``GET .../namespaces/NS/resourceclaims/NAME``; ``GET /api/v1/nodes/NAME`` (``add_node``);
* bearer-token authentication (401), and the validation the real server applies to a
  ResourceSlice, mirrored from the Kubernetes 1.36 source (see ``_invalid``: lengths in bytes,
  duplicate device names, the per-slice device limits, attribute name rules, immutable fields on
  update) as 422 Invalid with the real message format;
* device taints as 1.36 has them (DRADeviceTaints, beta and on): a taint without ``timeAdded``
  gets the time it arrived, to the second (defaulting, before validation); key, effect and 16
  per device are validated (``_taint_problems``; the 64-device limit is ``_invalid``'s).

Faults to inject: ``fail_next`` (the next requests answer with these statuses), ``delay`` (every
answer waits), ``forbid`` (RBAC: 403 with the real message for that verb and resource),
``conflict_next`` (the next update meets a concurrent writer), ``end_watches_at_once`` (every
watch ends before its first event, as a misbehaving proxy does), ``compact`` (etcd compaction:
older watches get 410 Gone), ``drop_watches`` (a restarted API server). ``wipe`` deletes a node's slices
as the kubelet does when it starts. ``writes`` records every successful write with its time
and the client that made it (``tokens`` maps more bearer tokens to client names;
``kubeconfig(path, client)`` writes one).
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
HISTORY = 1000
CLASSES = GROUP + "/deviceclasses"


@dataclass
class Write:
    at: float
    verb: str
    name: str
    obj: dict[str, Any] | None
    client: str = ""


@dataclass
class _Watch:
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]
    selector: dict[str, str]


@dataclass
class FakeApiServer:
    token: str = "stand-in-token"
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # more bearer tokens -> client name
    writes: list[Write] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    delay: float = 0.0
    forbid: set[tuple[str, str]] = field(default_factory=set)  # (verb, plural)
    conflict_next: int = 0
    end_watches_at_once: bool = False  # a proxy that ends every watch before its first event
    rejected: list[str] = field(default_factory=list)  # the messages of every 422
    compacted: int = 0  # versions up to this one are gone from the history (410 Gone)
    version: int = 100
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _watches: list[_Watch] = field(default_factory=list)
    # DeviceClasses (the dra-classes controller): their own store, history and watches.
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    class_history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _class_watches: list[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = field(default_factory=list)
    extended_resource_gate: bool = True  # False: drop spec.extendedResourceName, as 1.34/1.35 do
    _server: asyncio.AbstractServer | None = None
    _client: str = ""
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

    def kubeconfig(self, path: str, client: str = "") -> str:
        """A kubeconfig for this stand-in; with ``client``, a token of its own, so that writes
        are told apart by client."""
        token = self.token
        if client:
            token = f"{self.token}-{client}"
            self.tokens[token] = client
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"""apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster: {{server: "{self.url}"}}
users:
- name: sdm
  user: {{token: {token}}}
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
            "spec": {"devices": {"requests": _requests(results)}},
            "status": {"allocation": {"devices": {"results": results}}},
        }

    def add_node(self, name: str, uid: str) -> None:
        self.nodes[name] = {"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "uid": uid, "resourceVersion": self._bump()}}

    def writes_by(self) -> dict[str, int]:
        """Successful writes per client."""
        counts: dict[str, int] = {}
        for write in self.writes:
            counts[write.client] = counts.get(write.client, 0) + 1
        return counts

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
                self._client = self.tokens.get(headers.get("authorization", "").removeprefix("Bearer "), "")
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
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if self.token and token != self.token and token not in self.tokens:
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if self.fail_next:
            code = self.fail_next.pop(0)
            return code, _status(code, "InternalError", f"stand-in fault injection: {code}")
        plural = "resourceclaims" if "/resourceclaims" in path else \
            "nodes" if path.startswith("/api/v1/nodes") else "resourceslices"
        verb = {"POST": "create", "PUT": "update", "DELETE": "delete"}.get(method, "get")
        if method == "GET" and path.endswith("/resourceslices"):
            verb = "list"
        if (verb, plural) in self.forbid:
            group = "" if plural == "nodes" else "resource.k8s.io"
            qualified = f"{plural}.{group}" if group else plural
            return 403, _status(403, "Forbidden", f'{qualified} is forbidden: User '
                                f'"system:serviceaccount:sdm:smarter-device-manager" cannot {verb} resource '
                                f'"{plural}" in API group "{group}" at the cluster scope')
        return None

    def _answer(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, Any]]:
        refused = self._check(method, path, headers)
        if refused is not None:
            return refused
        node = re.fullmatch(r"/api/v1/nodes/([^/]+)", path)
        if node and method == "GET":
            if node.group(1) not in self.nodes:
                return 404, _status(404, "NotFound", f'nodes "{node.group(1)}" not found')
            return 200, self.nodes[node.group(1)]
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
                self.writes.append(Write(time.monotonic(), "delete", name, None, self._client))
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
        name = str((obj.get("metadata") or {}).get("name", ""))
        problems = _taint_problems(obj) + _invalid(obj, self.slices.get(name) if verb == "update" else None)
        if problems:
            # K/staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go:284-311 (NewInvalid)
            unique = list(dict.fromkeys(problems))
            joined = unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
            status = _status(422, "Invalid", f'ResourceSlice.resource.k8s.io "{name}" is invalid: {joined}')
            status["details"] = {"name": name, "group": "resource.k8s.io", "kind": "ResourceSlice",
                                 "causes": [{"field": p.split(": ", 1)[0], "message": p.split(": ", 1)[1]}
                                            for p in unique]}
            self.rejected.append(status["message"])
            return 422, status
        obj = json.loads(json.dumps(obj))
        name = obj["metadata"]["name"]
        obj["metadata"]["resourceVersion"] = self._bump()
        # the uid is the server's: new on every create (so a slice deleted and made again has
        # another), kept by every update whatever the body says
        obj["metadata"]["uid"] = f"uid-{name}-{obj['metadata']['resourceVersion']}" if verb == "create" \
            else self.slices[name]["metadata"]["uid"]
        self.slices[obj["metadata"]["name"]] = obj
        self.writes.append(Write(time.monotonic(), verb, obj["metadata"]["name"], obj, self._client))
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
        if self.end_watches_at_once:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        if since < self.compacted or (self.history and since < self.history[0][0] - 1):
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

    def compact(self) -> None:
        """Forget the history, as etcd's compaction does after other writes in the cluster: a
        watch from an older resourceVersion then gets an ERROR event with code 410 (Gone)."""
        self._bump()  # some other object changed since anything we hold
        self.history.clear()
        self.compacted = self.version

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


def _requests(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claim's spec.devices.requests behind its allocation results: a result's ``req/sub``
    comes from a request with ``firstAvailable`` subrequests (the allocator names the one it
    chose, K/staging/src/k8s.io/dynamic-resource-allocation/structured/internal/stable/
    allocator_stable.go:599-604)."""
    requests: dict[str, dict[str, Any]] = {}
    for result in results:
        name, _, sub = str(result.get("request", "dev")).partition("/")
        if not sub:
            requests.setdefault(name, {"name": name, "exactly": {"deviceClassName": "d"}})
            continue
        request = requests.setdefault(name, {"name": name, "firstAvailable": []})
        request["firstAvailable"].append({"name": sub, "deviceClassName": "d"})
    return list(requests.values())


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


# --- validation: a mirror of the real server's, for what a driver sends --------------------------------
# Kubernetes 1.36, resource.k8s.io/v1 ResourceSlice. K/ = github.com/openshift/kubernetes (the 1.36.2
# copy in openshift/microshift's deps), V = K/pkg/apis/resource/validation/validation.go. The
# registry strategy (K/pkg/registry/resource/resourceslice/strategy.go:61-64, 100-102) returns these
# hand-written errors unchanged. Go's len() counts bytes: every length here is of the UTF-8 encoding.
# Not mirrored (a driver of ours never sends them): consumesCounters, sharedCounters' own
# rules, perDeviceNodeSelection per device, binding conditions, nodeSelector contents.
MAX_DEVICES = 128  # ResourceSliceMaxDevices, K/pkg/apis/resource/types.go:257
MAX_DEVICES_ADVANCED = 64  # ResourceSliceMaxDevicesWithAdvancedFeatures, types.go:264 (V:713-716)
MAX_ATTRIBUTES_AND_CAPACITIES = 32  # types.go:615
MAX_ATTRIBUTE_VALUES = 48  # types.go:619
MAX_ID = 32  # DeviceMaxIDLength, types.go:646
MAX_DOMAIN = 63  # DeviceMaxDomainLength, types.go:643
MAX_VALUE = 64  # DeviceAttributeMaxValueLength, types.go:721 (bytes)
MAX_KEY_IN_PATH = 96  # V:79 attributeAndCapacityMaxKeyLength
_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _LABEL_FMT + r"(\." + _LABEL_FMT + ")*"
_C_ID_FMT = "[A-Za-z_][A-Za-z0-9_]*"
# K/staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go:167-201 (messages verbatim,
# two spaces before "or" included)
LABEL_MESSAGE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                 "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
                 f"used for validation is '{_LABEL_FMT}')")
SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                     "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
                     f"regex used for validation is '{_SUBDOMAIN_FMT}')")
# K/staging/src/k8s.io/apimachinery/pkg/api/validate/content/identifier.go:23-35
C_ID_MESSAGE = ("a valid C identifier must start with alphabetic character or '_', followed by a string of "
                "alphanumeric characters or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName', regex used for "
                f"validation is '{_C_ID_FMT}')")
# V:965-983 semverRe (RE2; [0-9] for Go's ASCII \d)
_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
                     r"(-(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
                     r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?")
_SCALARS = ("int", "bool", "string", "version")
_LISTS = ("ints", "bools", "strings", "versions")  # DRAListTypeAttributes: alpha, off in 1.36: dropped


def _n(text: str) -> int:
    return len(text.encode("utf-8"))


def _q(value: Any) -> str:
    """A value as field.Error prints it (apimachinery field/errors.go:109-154)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _invalid_value(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {_q(value)}: {detail}"


def _too_long(path: str, limit: int) -> str:
    return f"{path}: Too long: may not be more than {limit} bytes"


def _label_errors(path: str, value: str) -> list[str]:
    """ValidateDNS1123Label, K/pkg/apis/core/validation/validation.go:159 (util IsDNS1123Label)."""
    errors = []
    if len(value) > 63:
        errors.append(_invalid_value(path, value, "must be no more than 63 characters"))
    if not re.fullmatch(_LABEL_FMT, value):
        detail = "must not contain dots" if re.fullmatch(_SUBDOMAIN_FMT, value) else LABEL_MESSAGE
        errors.append(_invalid_value(path, value, detail))
    return errors


def _subdomain_errors(path: str, value: str) -> list[str]:
    """util IsDNS1123Subdomain (validation.go:198)."""
    errors = []
    if len(value) > 253:
        errors.append(_invalid_value(path, value, "must be no more than 253 characters"))
    if not re.fullmatch(_SUBDOMAIN_FMT, value):
        errors.append(_invalid_value(path, value, SUBDOMAIN_MESSAGE))
    return errors


def _driver_name_errors(path: str, value: str) -> list[str]:
    """ValidateCSIDriverName, K/pkg/apis/core/validation/validation.go:1810-1838 (uppercase passes)."""
    if not value:
        return [f"{path}: Required value"]
    if _n(value) > 63:
        return [_too_long(path, 63)]
    return _subdomain_errors(path, value.lower())


def _c_identifier_errors(path: str, value: str) -> list[str]:
    """V:1243-1252: TooLong past 32 bytes, then the C identifier format."""
    errors = []
    if _n(value) > MAX_ID:
        errors.append(_too_long(path, MAX_ID))
    if not re.fullmatch(_C_ID_FMT, value):
        errors.append(_invalid_value(path, value, C_ID_MESSAGE))
    return errors


def _qualified_name_errors(path: str, key: str) -> list[str]:
    """validateQualifiedName, V:1199-1230 (errors at the map's path, not at [key])."""
    parts = key.split("/")
    if len(parts) == 1:
        return _c_identifier_errors(path, key)
    if len(parts) > 2:
        return []  # accepted without error: a TODO in the real code (V:1217-1227)
    domain, name = parts
    errors = []
    if not domain:
        errors.append(_invalid_value(path, "", "the domain must not be empty"))
    else:
        errors += [e for e in _driver_name_errors(path, domain) if not e.endswith("Required value")]
    if not name:
        errors.append(_invalid_value(path, "", "the name must not be empty"))
    else:
        errors += _c_identifier_errors(path, name)
    return errors


def _key_in_path(key: str) -> str:
    """V:1372-1383: keys longer than 96 bytes are shortened in error paths."""
    return key if _n(key) <= MAX_KEY_IN_PATH else key[:47] + "..." + key[-46:]


def _attribute_errors(path: str, value: Any) -> list[str]:
    """validateDeviceAttribute, V:985-1062 (list forms dropped first: their gate is off)."""
    if not isinstance(value, dict):
        return [_invalid_value(path, "", "exactly one value must be specified")]
    present = [k for k in _SCALARS if k in value and value[k] is not None]
    if len(present) != 1:
        shown: Any = "" if not present else {k: value[k] for k in present}
        return [_invalid_value(path, shown, "exactly one value must be specified")]
    kind = present[0]
    item = value[kind]
    if kind == "string":
        return [_too_long(f"{path}.string", MAX_VALUE)] if _n(str(item)) > MAX_VALUE else []
    if kind == "version":
        errors = []
        if not _SEMVER.fullmatch(str(item)):
            errors.append(_invalid_value(f"{path}.version", item,
                                         "must be a string compatible with semver.org spec 2.0.0"))
        if _n(str(item)) > MAX_VALUE:
            errors.append(_too_long(f"{path}.version", MAX_VALUE))
        return errors
    return []


def _quantity(text: Any) -> int:
    """The plain integer quantities a driver of ours sends (Kubernetes takes any Quantity)."""
    return int(str(text))


def _capacity_errors(path: str, capacity: Any, multiple: bool) -> list[str]:
    """V:1064-1192: requestPolicy needs allowMultipleAllocations, and then must be consistent."""
    policy = capacity.get("requestPolicy") if isinstance(capacity, dict) else None
    if policy is None:
        return []
    if not multiple:
        return [f"{path}.requestPolicy: Forbidden: allowMultipleAllocations must be true"]
    errors: list[str] = []
    value = _quantity(capacity.get("value", 0))
    rng = policy.get("validRange")
    if policy.get("validValues") is not None and rng is not None:
        return [f"{path}.requestPolicy: Forbidden: validValues and validRange are mutually exclusive"]
    if "default" not in policy and (rng is not None or policy.get("validValues") is not None):
        return [f"{path}.requestPolicy.default: Required value"]
    if rng is not None:
        default = _quantity(policy["default"])
        low = rng.get("min")
        if low is None:
            return [f"{path}.requestPolicy.validRange.min: Required value"]
        low = _quantity(low)
        if low > value:
            errors.append(_invalid_value(f"{path}.requestPolicy.validRange.min", str(low),
                                         "must be less than or equal to capacity value"))
        if default < low:
            errors.append(_invalid_value(f"{path}.requestPolicy.default", str(default),
                                         "must be within range"))
        high = rng.get("max")
        if high is not None:
            high = _quantity(high)
            if high < low or high > value or high < default:
                errors.append(_invalid_value(f"{path}.requestPolicy.validRange.max", str(high),
                                             "must be in [min, capacity value] and at least the default"))
        step = rng.get("step")
        if step is not None:
            step = _quantity(step)
            if low + step > value or (default - low) % step or (high is not None and (high - low) % step):
                errors.append(_invalid_value(f"{path}.requestPolicy.validRange.step", str(step),
                                             "must fit the range and divide it"))
    return errors


def _device_errors(path: str, device: dict[str, Any]) -> list[str]:
    """validateDevice, V:822-897."""
    errors = _label_errors(f"{path}.name", str(device.get("name", "")))
    attributes = {k: {kk: vv for kk, vv in v.items() if kk not in _LISTS} if isinstance(v, dict) else v
                  for k, v in (device.get("attributes") or {}).items()}
    capacity = device.get("capacity") or {}
    total = len(attributes) + len(capacity)
    if total > MAX_ATTRIBUTES_AND_CAPACITIES:
        errors.append(_invalid_value(path, total, "the total number of attributes and capacities must not "
                                     f"exceed {MAX_ATTRIBUTES_AND_CAPACITIES}"))
    values = len(attributes)  # scalars count one each (list forms are dropped, V:934-946)
    if values > MAX_ATTRIBUTE_VALUES:
        errors.append(_invalid_value(path, values, "the total number of attribute values must not exceed "
                                     f"{MAX_ATTRIBUTE_VALUES}"))
    for key, value in attributes.items():
        errors += _qualified_name_errors(f"{path}.attributes", key)
        errors += _attribute_errors(f"{path}.attributes[{_key_in_path(key)}]", value)
    multiple = device.get("allowMultipleAllocations") is True
    for key, value in capacity.items():
        errors += _qualified_name_errors(f"{path}.capacity", key)
        errors += _capacity_errors(f"{path}.capacity[{_key_in_path(key)}]", value, multiple)
    return errors


def _pool_errors(pool: dict[str, Any]) -> list[str]:
    """V:810-820 and V:82-96: each '/'-separated part of the name a DNS subdomain."""
    errors = []
    name = str(pool.get("name", ""))
    if not name:
        errors.append("spec.pool.name: Required value")
    elif _n(name) > 253:
        errors.append(_too_long("spec.pool.name", 253))
    else:
        for part in name.split("/"):
            errors += _subdomain_errors("spec.pool.name", part)
    count = int(pool.get("resourceSliceCount", 0))
    if count <= 0:
        errors.append(_invalid_value("spec.pool.resourceSliceCount", count, "must be greater than zero"))
    generation = int(pool.get("generation", 0))
    if generation < 0:
        errors.append(_invalid_value("spec.pool.generation", generation,
                                     "must be greater than or equal to zero"))
    return errors


def _has_advanced(device: dict[str, Any]) -> bool:
    return bool(device.get("taints") or device.get("consumesCounters"))


def _invalid(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The errors the real API server reports for this ResourceSlice (ValidateResourceSlice[Update],
    V:639-733), as its messages say them."""
    errors = _subdomain_errors("metadata.name", str((obj.get("metadata") or {}).get("name", "")))
    spec = obj.get("spec") or {}
    errors += _driver_name_errors("spec.driver", str(spec.get("driver", "")))
    errors += _pool_errors(spec.get("pool") or {})
    if old is not None:  # V:656-660
        before = old.get("spec") or {}
        for key, shown in (("pool", "spec.pool.name"), ("driver", "spec.driver"),
                           ("nodeName", "spec.nodeName")):
            now = (spec.get("pool") or {}).get("name") if key == "pool" else spec.get(key)
            then = (before.get("pool") or {}).get("name") if key == "pool" else before.get(key)
            if now != then:
                errors.append(_invalid_value(shown, now, "field is immutable"))
    chosen = [k for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection")
              if spec.get(k) is not None]
    if not chosen:
        errors.append("spec: Required value: exactly one of `nodeName`, `nodeSelector`, `allNodes`, "
                      "`perDeviceNodeSelection` is required")
    elif len(chosen) > 1:
        errors.append(_invalid_value("spec", "{" + ", ".join(f"`{k}`" for k in chosen) + "}",
                                     "exactly one of `nodeName`, `nodeSelector`, `allNodes`, "
                                     "`perDeviceNodeSelection` is required, but multiple fields are set"))
    if spec.get("nodeName") is not None:
        node = str(spec["nodeName"])
        if not node:
            errors.append(_invalid_value("spec.nodeName", "",
                                         "must be either unset or set to a non-empty string"))
        else:
            errors += _subdomain_errors("spec.nodeName", node)
    if spec.get("sharedCounters") is not None and spec.get("devices") is not None:
        errors.append(_invalid_value("spec", "", "only one of `sharedCounters` or `devices` is allowed"))
    devices = spec.get("devices") or []
    limit = MAX_DEVICES_ADVANCED if any(_has_advanced(d) for d in devices) else MAX_DEVICES
    if len(devices) > limit:  # validateSet: nothing else about the devices is checked then (V:1302-1313)
        return [*errors, f"spec.devices: Too many: {len(devices)}: must have at most {limit} items"]
    seen: set[str] = set()
    duplicates = []
    for number, device in enumerate(devices):
        errors += _device_errors(f"spec.devices[{number}]", device)
        name = str(device.get("name", ""))
        if name in seen:
            duplicates.append(f"spec.devices[{number}]: Duplicate value: {_q(name)}")
        seen.add(name)
    return errors + duplicates


_TAINT_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _taint_problems(obj: dict[str, Any]) -> list[str]:
    """Default each taint's ``timeAdded`` as the server does (v1/defaults.go), then the taint rules
    of 1.36's validation (V:845-853, 1505-1522)."""
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
