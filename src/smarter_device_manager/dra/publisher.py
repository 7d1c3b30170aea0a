"""The ResourceSlice publisher: keeps the API server's slices of this node equal to our devices.

Two tasks and one piece of state. The *watch* task lists our slices (field selector: this node,
this driver), then watches them, so ``observed`` is what the server holds: a slice the kubelet
deletes when it starts, or anybody edits, shows up within the event's latency. The *writer* task
wakes on any change of desired or observed state, asks ``slices.plan`` for the fewest writes and
carries them out. No timer polls: an idle node holds one watch connection and costs nothing.

Faults: every API error is counted and kept as ``error`` (``/readyz`` shows it); the writer
retries with backoff (0.5 s doubling to 30 s); a conflict (someone wrote the slice since we
read it) or a slice gone under us makes it list again before the next plan, so the write that
follows is based on what the server really has. A watch that cannot be opened (the server away,
restarting) also makes it list again before the next watch: that list, retried by the writer with
its backoff and jitter, is what clears the error once the server is back (a resumed watch of an
idle node brings no event that would). A 403 names the verb and resource the
ServiceAccount lacks. Prepared claims do not depend on any of this (see ``node.py``).

A watch the server (or a proxy in between) ends at once without a single event would be reopened
at once, forever: a busy loop of requests with nothing to show for it. So a watch that ended
within ``QUICK_END`` seconds without an event (a BOOKMARK counts; an ERROR does not) is reopened
after a backoff with jitter (the same 0.5 s doubling to 30 s), counted in
``dra_watch_ended_empty_total``, and once ``EMPTY_WATCHES_UNREADY`` of them come in a row,
``watch_problem`` says so (``/readyz``). A watch that ran longer (the server's timeout on an idle
node) is reopened at once, as it should be. A watch refused with 410 Gone, or ended by an ERROR
event (410: the version we asked for is compacted away), starts over from a fresh list.

Two daemons on one node (a rolling update): only the holder of ``publisher.lock`` (``locks.py``)
writes; ``lead()`` is called once it has the lock. The other neither lists nor watches nor writes.

Owner: before its first write the writer reads this node's Node object once for its uid (RBAC:
``get`` on ``nodes``) and every slice names the Node as owner (``slices.owner_reference``).

Slices are published only once the kubelet has accepted our registration: the kubelet wipes a
node's slices when it starts and those of a driver that is not registered, and devices that no
kubelet plugin can prepare would only strand pods.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from smarter_device_manager.dra.devices import DraDevice
from smarter_device_manager.dra.kube import KubeClient, KubeError, path_of
from smarter_device_manager.dra.slices import API_VERSION, Echo, Write, owner_reference, plan
from smarter_device_manager.dra.supervise import Supervisor
from smarter_device_manager.metrics import Metrics

log = logging.getLogger(__name__)

RESOURCE = "resourceslices.resource.k8s.io"
NODES = "nodes"
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
WATCH_TIMEOUT = 300
QUICK_END = 5.0
EMPTY_WATCHES_UNREADY = 3


def _jitter(delay: float) -> float:
    return delay * (0.8 + 0.4 * int.from_bytes(os.urandom(2), "big") / 65535)


def _newer(a: str, b: str) -> bool:
    """Is resourceVersion ``a`` older than ``b``? Opaque by contract, integers in practice."""
    return a.isdigit() and b.isdigit() and int(a) < int(b)


class Publisher:
    def __init__(self, client: KubeClient, node: str, driver: str, metrics: Metrics,
                 on_write: Callable[[Write], None] | None = None,
                 on_first_list: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> None:
        self.client = client
        self.node = node
        self.driver = driver
        self.metrics = metrics
        self.devices: list[DraDevice] = []
        self.unplugged: list[dict[str, Any]] = []
        self.observed: dict[str, dict[str, Any]] = {}
        self.echoes: dict[str, Echo] = {}
        self.enabled = False
        self.leading = False
        self.owner: dict[str, Any] | None = None
        self.error: str | None = None
        self.listed = False
        self.watching = False
        self.empty_watches = 0  # watches in a row that ended at once without an event
        self._list_version = ""
        self._wake = asyncio.Event()
        self._listed_event = asyncio.Event()
        self._on_write = on_write
        self._on_first_list = on_first_list
        self._selector = f"spec.nodeName={node},spec.driver={driver}"
        self._path = path_of(API_VERSION, "resourceslices")

    # --- inputs --------------------------------------------------------------------------
    def set_devices(self, devices: list[DraDevice], unplugged: list[dict[str, Any]] | None = None) -> None:
        """What to publish: the devices, and the tainted entries of those in their removal grace."""
        self.devices = devices
        self.unplugged = unplugged or []
        self._wake.set()

    def enable(self) -> None:
        """The kubelet accepted our registration: publish (again)."""
        self.enabled = True
        self._wake.set()

    def lead(self) -> None:
        """This daemon holds ``publisher.lock``: it is the one that writes slices."""
        self.leading = True
        self._wake.set()

    @property
    def watch_problem(self) -> str | None:
        """Why the watch is not doing its job although no request fails, or None."""
        if self.empty_watches < EMPTY_WATCHES_UNREADY:
            return None
        return (f"the watch on our ResourceSlices ended at once without any event {self.empty_watches} "
                "times in a row (the API server or a proxy in between cuts it); reopening it with "
                "backoff")

    @property
    def in_sync(self) -> bool:
        return self.enabled and self.leading and self.listed and self.error is None and \
            not plan(self.node, self.driver, self.devices, self.observed, self.echoes, self.owner,
                     self.unplugged)

    # --- tasks ---------------------------------------------------------------------------
    async def run(self, supervisor: Supervisor | None = None) -> None:
        """The writer and the watch, each started again if it fails with a bug (supervise.py)."""
        supervisor = supervisor or Supervisor(self.metrics)
        await asyncio.gather(supervisor.start("the slice writer", self._writer),
                             supervisor.start("the slice watch", self._watcher))

    async def _list(self) -> None:
        answer = await self.client.request(
            "GET", f"{self._path}?fieldSelector={self._selector}", verb="list", resource=RESOURCE)
        items = answer.get("items") or []
        self.observed = {str(i["metadata"]["name"]): i for i in items if isinstance(i, dict)}
        self._list_version = str((answer.get("metadata") or {}).get("resourceVersion", ""))
        if self._on_first_list is not None:  # once: what our slices held when we started
            first, self._on_first_list = self._on_first_list, None
            first(self.observed)
        self.listed = True
        self._listed_event.set()

    def _fail(self, exc: KubeError) -> None:
        self.metrics.inc("dra_api_errors_total", verb=exc.verb or "?", code=str(exc.status))
        message = str(exc)
        if message != self.error:
            log.error("API server: %s", message)
        self.error = message

    async def _writer(self) -> None:
        delay = BACKOFF_START
        # From a fresh list, and at once: this may be a restart after a bug in the middle of a
        # plan, which the event that woke it will not repeat.
        self.listed = False
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.enabled or not self.leading:
                continue
            try:
                if self.owner is None:
                    node = await self.client.request("GET", path_of("v1", NODES, self.node), verb="get",
                                                     resource=NODES)
                    uid = str((node.get("metadata") or {}).get("uid") or "")
                    if not uid:
                        raise KubeError(200, "BadResponse", f"node {self.node} has no metadata.uid", "get",
                                        NODES)
                    self.owner = owner_reference(self.node, uid)
                if not self.listed:
                    await self._list()
                for write in plan(self.node, self.driver, self.devices, self.observed, self.echoes,
                                  self.owner, self.unplugged):
                    await self._apply(write)
            except KubeError as exc:
                self._fail(exc)
                if exc.conflict or exc.not_found:
                    # A resourceVersion conflict, AlreadyExists on create, or a slice gone under
                    # us: the plan was based on stale state; read what the server has.
                    self.listed = False
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                self._wake.set()
                continue
            if self.error is not None:
                log.info("API server: slices published again")
            self.error = None
            delay = BACKOFF_START

    async def _apply(self, write: Write) -> None:
        path = f"{self._path}/{write.name}"
        if write.verb == "delete":
            try:
                await self.client.request("DELETE", path, verb="delete", resource=RESOURCE)
            except KubeError as exc:
                if not exc.not_found:
                    raise
            self.observed.pop(write.name, None)
            self.echoes.pop(write.name, None)
        else:
            assert write.body is not None
            if write.verb == "create":
                stored = await self.client.request("POST", self._path, write.body, verb="create",
                                                   resource=RESOURCE)
            else:
                stored = await self.client.request("PUT", path, write.body, verb="update", resource=RESOURCE)
            self.observed[write.name] = stored
            self.echoes[write.name] = Echo(write.body["spec"], stored.get("spec") or {})
        self.metrics.inc("dra_slice_writes_total", verb=write.verb)
        log.info("ResourceSlice %s: %s (%d devices)", write.name, write.verb + "d" if write.verb != "update"
                 else "updated", len((write.body or {}).get("spec", {}).get("devices", ())))
        if self._on_write is not None:
            self._on_write(write)

    async def _watcher(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_START
        self.watching = False  # a restart after a bug
        while True:
            if not self.listed:
                self._listed_event.clear()
                self._wake.set()  # the writer lists (it must anyway before it writes)
                await self._listed_event.wait()
            version = self._list_version
            delivered = False
            started = loop.time()
            try:
                params = {"fieldSelector": self._selector, "allowWatchBookmarks": "true",
                          "timeoutSeconds": str(WATCH_TIMEOUT)}
                if version:
                    params["resourceVersion"] = version
                self.watching = True
                async for event in self.client.watch(self._path, params, resource=RESOURCE):
                    if event.get("type") != "ERROR":
                        delivered = True
                        delay = BACKOFF_START
                        self.empty_watches = 0
                    if not self._event(event):
                        break
            except KubeError as exc:
                self.watching = False
                self._fail(exc)
                if exc.status == 410:  # Gone: our resourceVersion is compacted away
                    log.info("slice watch refused with 410 Gone; listing again")
                # List again before the next watch, for every refusal: the writer's list (with its
                # own backoff and jitter) is what tells that the server answers again and clears
                # the error. A watch resumed from its version on an idle node brings no event
                # (BOOKMARKs wake nobody), so without it the error, and /readyz's 503, stayed.
                self.listed = False
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.watching = False
            if delivered or loop.time() - started >= QUICK_END:
                continue  # a watch that did its job, or the server's timeout: reopen at once
            self.empty_watches += 1
            self.metrics.inc("dra_watch_ended_empty_total")
            if self.empty_watches == EMPTY_WATCHES_UNREADY:
                log.warning("%s", self.watch_problem)
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, BACKOFF_MAX)

    def _event(self, event: dict[str, Any]) -> bool:
        """Take one watch event; False when the watch must start over from a fresh list."""
        kind = event.get("type")
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion", ""))
        if kind == "ERROR":
            log.info("slice watch ended by the server (%s); listing again",
                     obj.get("message", obj.get("code")))
            self.listed = False
            return False
        if version:
            self._list_version = version
        if kind == "BOOKMARK":
            return True
        name = str(meta.get("name", ""))
        if kind == "DELETED":
            if name in self.observed:
                self.observed.pop(name, None)
                self.echoes.pop(name, None)
                log.info("ResourceSlice %s was deleted (the kubelet does so when it starts); "
                         "publishing it again", name)
                self.metrics.inc("dra_slices_deleted_by_others_total")
        elif kind in ("ADDED", "MODIFIED"):
            held = str((self.observed.get(name, {}).get("metadata") or {}).get("resourceVersion", ""))
            if not _newer(version, held):
                self.observed[name] = obj
        self._wake.set()
        return True
