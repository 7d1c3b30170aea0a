"""A list+watch mirror of one kind of API object: what the API server holds, kept current.

The dra-classes controller needs two of these (the driver's ResourceSlices on every node, and the
DeviceClasses), so the loop lives here once instead of inline as in ``publisher.py`` (whose
mirror is tied to its writer and is left as it is). Shape, as client-go's reflector:

* **list** (with the list's ``resourceVersion``), then **watch** from that version, with
  bookmarks, ending after ``timeoutSeconds`` and resumed from the last version seen;
* an ``ERROR`` event (410 Gone: the version was compacted away) or a watch refused with 410 makes
  it list again; any other API error is retried with backoff (0.5 s doubling to 30 s) from the
  version it had, and reported through ``on_error`` (``/readyz`` shows it);
* an object the caller wrote itself can be put in with :meth:`took` so a plan made before the
  watch brings the echo does not repeat the write; an event never replaces a newer object.

``on_change`` is called after every list and every event that changed something; it must only
wake the caller (no I/O), which then reads ``objects``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from smarter_device_manager.dra.kube import KubeClient, KubeError

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
WATCH_TIMEOUT = 300


def jitter(delay: float) -> float:
    """``delay`` +-20 %, so many clients that failed together do not retry together."""
    return delay * (0.8 + 0.4 * int.from_bytes(os.urandom(2), "big") / 65535)


def older(a: str, b: str) -> bool:
    """Is resourceVersion ``a`` older than ``b``? Opaque by contract, integers in practice."""
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def version_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Mirror:
    """The objects at ``path`` (filtered by ``params``, e.g. a fieldSelector), by name."""

    def __init__(self, client: KubeClient, path: str, resource: str, params: dict[str, str],
                 on_change: Callable[[], None], on_error: Callable[[KubeError], None]) -> None:
        self.client = client
        self.path = path
        self.resource = resource
        self.params = params
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = False
        self.watching = False
        self._version = ""
        self._on_change = on_change
        self._on_error = on_error

    def took(self, obj: dict[str, Any]) -> None:
        """Our own write's answer: hold it now (the watch's echo of it changes nothing)."""
        self._put(obj)

    def dropped(self, name: str) -> None:
        """Our own delete."""
        self.objects.pop(name, None)

    async def run(self) -> None:
        delay = BACKOFF_START
        self.watching = False  # a restart after a bug (supervise.py)
        while True:
            try:
                if not self.synced:
                    await self._list()
                params = {**self.params, "allowWatchBookmarks": "true",
                          "timeoutSeconds": str(WATCH_TIMEOUT)}
                if self._version:
                    params["resourceVersion"] = self._version
                self.watching = True
                async for event in self.client.watch(self.path, params, resource=self.resource):
                    delay = BACKOFF_START
                    if not self._event(event):
                        break
                self.watching = False
            except KubeError as exc:
                self.watching = False
                if exc.gone:
                    self.synced = False
                self._on_error(exc)
                await asyncio.sleep(jitter(delay))
                delay = min(delay * 2, BACKOFF_MAX)

    async def _list(self) -> None:
        query = urlencode(self.params)
        answer = await self.client.request("GET", f"{self.path}?{query}" if query else self.path,
                                           verb="list", resource=self.resource)
        items = answer.get("items") or []
        self.objects = {str(i["metadata"]["name"]): i for i in items
                        if isinstance(i, dict) and isinstance(i.get("metadata"), dict)}
        self._version = str((answer.get("metadata") or {}).get("resourceVersion", ""))
        self.synced = True
        self._on_change()

    def _put(self, obj: dict[str, Any]) -> bool:
        name = str((obj.get("metadata") or {}).get("name", ""))
        held = self.objects.get(name)
        if held is not None and older(version_of(obj), version_of(held)):
            return False
        self.objects[name] = obj
        return True

    def _event(self, event: dict[str, Any]) -> bool:
        """Take one watch event; False when the watch must start over from a fresh list."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            log.info("watch of %s ended by the server (%s); listing again", self.resource,
                     obj.get("message", obj.get("code")))
            self.synced = False
            return False
        version = version_of(obj)
        if version:
            self._version = version
        if kind == "BOOKMARK":
            return True
        name = str((obj.get("metadata") or {}).get("name", ""))
        if kind == "DELETED":
            if self.objects.pop(name, None) is None:
                return True
        elif kind in ("ADDED", "MODIFIED") and not self._put(obj):
            return True  # older than what we hold
        self._on_change()
        return True
