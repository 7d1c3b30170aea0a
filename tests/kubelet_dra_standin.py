"""A STAND-IN for the kubelet's DRA side: its plugin watcher and its calls to a DRA driver.

What it does, as the real kubelet (1.34+) does, per shared/tools/realk8s/README.md and the
smoke_dra.py wire facts:

* finds registration sockets in ``plugins_registry`` (the real one uses fsnotify; this looks
  every 20 ms, which is fine for a test), calls ``GetInfo``, checks the type is ``DRAPlugin``
  and that ``v1.DRAPlugin`` is among the supported versions, dials the endpoint, and answers
  ``NotifyRegistrationStatus`` (refusing, with an error, a wrong type or version);
* calls ``NodePrepareResources`` / ``NodeUnprepareResources`` on the registered endpoint with
  real protobuf stubs generated from our .protos (tests/dra_pb2.py);
* ``restart()`` is a kubelet restart: it wipes the node's slices at the API server stand-in (the
  real kubelet deletes them when it starts) and registers every plugin again.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable

import dra_pb2 as dpb
import pluginregistration_pb2 as rpb
from dra_grpc import DRAPluginStub
from fake_apiserver import FakeApiServer
from grpclib.client import Channel
from pluginregistration_grpc import RegistrationStub


class KubeletDraStandin:
    def __init__(self, registry_dir: str, node: str, api: FakeApiServer | None = None) -> None:
        self.registry_dir = registry_dir
        self.node = node
        self.api = api
        self.registered: dict[str, str] = {}  # driver -> endpoint
        self.refused: list[str] = []
        self._seen: dict[str, int] = {}  # socket path -> inode registered
        self._task: asyncio.Task[None] | None = None
        self._channels: list[Channel] = []
        self._stubs: dict[str, DRAPluginStub] = {}

    async def start(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    async def restart(self) -> None:
        """Kubelet restart: slices wiped, every plugin registered again."""
        await self.stop()
        self.registered.clear()
        self._seen.clear()
        if self.api is not None:
            self.api.wipe(self.node)
        await self.start()

    async def _watch(self) -> None:
        while True:
            try:
                names = os.listdir(self.registry_dir)
            except FileNotFoundError:
                names = []
            for name in names:
                path = os.path.join(self.registry_dir, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if stat.S_ISSOCK(st.st_mode) and self._seen.get(path) != st.st_ino:
                    self._seen[path] = st.st_ino
                    try:
                        await self._register(path)
                    except (OSError, asyncio.TimeoutError) as exc:
                        self.refused.append(f"{path}: {exc}")
                        self._seen.pop(path, None)
            await asyncio.sleep(0.02)

    async def _register(self, path: str) -> None:
        channel = Channel(path=path)
        try:
            stub = RegistrationStub(channel)
            info = await asyncio.wait_for(stub.GetInfo(rpb.InfoRequest()), 5)
            error = ""
            if info.type != "DRAPlugin":
                error = f"plugin type {info.type!r} is not DRAPlugin"
            elif "v1.DRAPlugin" not in info.supported_versions:
                error = f"none of {list(info.supported_versions)} is supported (want v1.DRAPlugin)"
            elif not os.path.exists(info.endpoint):
                error = f"endpoint {info.endpoint} does not exist"
            await asyncio.wait_for(stub.NotifyRegistrationStatus(
                rpb.RegistrationStatus(plugin_registered=not error, error=error)), 5)
            if error:
                self.refused.append(error)
            else:
                self.registered[info.name] = info.endpoint
        finally:
            channel.close()

    def _stub(self, driver: str) -> DRAPluginStub:
        """One connection per endpoint, kept, as the kubelet keeps its gRPC connection."""
        endpoint = self.registered[driver]
        if endpoint not in self._stubs:
            channel = Channel(path=endpoint)
            self._channels.append(channel)
            self._stubs[endpoint] = DRAPluginStub(channel)
        return self._stubs[endpoint]

    async def prepare(self, driver: str, *claims: tuple[str, str, str]) -> dpb.NodePrepareResourcesResponse:
        """Claims as (namespace, name, uid)."""
        return await self._stub(driver).NodePrepareResources(dpb.NodePrepareResourcesRequest(
            claims=[dpb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]))

    @staticmethod
    def container_cdi_ids(claim: dpb.NodePrepareResourceResponse, request: str = "") -> list[str]:
        """The CDI IDs a container gets from one prepared claim, as the kubelet picks them: a
        container naming ``request`` (in ``resources.claims[].request``, a DNS label, so never
        ``req/sub``) gets the devices whose request_names hold exactly that name, or that have
        none; a container naming no request gets them all (Kubernetes 1.36
        pkg/kubelet/cm/dra/claiminfo.go:122-135, cdiDevicesAsList)."""
        return [cdi_id for device in claim.devices
                if not request or not device.request_names or request in device.request_names
                for cdi_id in device.cdi_device_ids]

    async def unprepare(self, driver: str,
                        *claims: tuple[str, str, str]) -> dpb.NodeUnprepareResourcesResponse:
        return await self._stub(driver).NodeUnprepareResources(dpb.NodeUnprepareResourcesRequest(
            claims=[dpb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]))


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Wait until ``predicate()``; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
