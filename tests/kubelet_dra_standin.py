"""A STAND-IN for the kubelet's DRA side: its plugin watcher and its calls to a DRA driver.

What it does, as the real kubelet (1.34+) does, per shared/tools/realk8s/README.md and the
smoke_dra.py wire facts:

* finds registration sockets in ``plugins_registry`` (the real one uses fsnotify; this looks
  every 20 ms, which is fine for a test), calls ``GetInfo``, checks the type is ``DRAPlugin``
  and that ``v1.DRAPlugin`` is among the supported versions, dials the endpoint, and answers
  ``NotifyRegistrationStatus`` (refusing, with an error, a wrong type or version);
* keeps every registration of a driver, in order, as pkg/kubelet/cm/dra/plugin/
  dra_plugin_manager.go does (1.33+, for rolling updates): a second registration socket for the
  same driver adds a plugin (refused if it names an endpoint already registered); calls go to the
  newest one that is connected (here: whose endpoint socket exists), else the newest; a
  registration socket that disappears deregisters its plugin (the pluginwatcher's reconciler);
  a socket path registered again replaces its old registration;
* calls ``NodePrepareResources`` / ``NodeUnprepareResources`` on the registered endpoint with
  real protobuf stubs generated from our .protos (tests/dra_pb2.py);
* ``restart()`` is a kubelet restart: it wipes the node's slices at the API server stand-in (the
  real kubelet deletes them when it starts) and registers every plugin again;
* device health (ResourceHealthStatus), as 1.36's kubelet does it (pkg/kubelet/cm/dra:
  plugin/dra_plugin_manager.go, manager.go, healthinfo.go): after a registration it calls
  ``NodeWatchResources`` on the plugin's endpoint (1.36: ``v1alpha1`` whatever GetInfo listed;
  ``kubernetes="1.37"``: the newest of ``v1``/``v1alpha1`` that GetInfo listed, none if neither),
  stamps every report with its arrival time, takes each message as the complete list, calls a
  device Unknown (message cleared) when nothing came for its ``health_check_timeout_seconds``
  (30 s when unset), clears the driver's devices when the stream ends, and calls again 5 s later.
  ``health()`` is what it would write into a pod's ``allocatedResourcesStatus``; ``reports`` keeps
  every message with its arrival time.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dra_pb2 as dpb
import drahealth_v1_grpc
import drahealth_v1_pb2
import drahealth_v1alpha1_grpc
import drahealth_v1alpha1_pb2
import pluginregistration_pb2 as rpb
from dra_grpc import DRAPluginStub
from fake_apiserver import FakeApiServer
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from pluginregistration_grpc import RegistrationStub

HEALTH_V1ALPHA1 = "v1alpha1.DRAResourceHealth"
HEALTH_V1 = "v1.DRAResourceHealth"
DEFAULT_HEALTH_TIMEOUT = 30.0
# Prepare and unprepare calls end with DEADLINE_EXCEEDED after this long (the kubelet bounds
# its calls to a plugin too): a call that gets no answer fails the test instead of hanging it.
CALL_TIMEOUT = 30.0
HEALTH_NAMES = {0: "Unknown", 1: "Healthy", 2: "Unhealthy"}


@dataclass
class DeviceHealth:
    """One device in the kubelet's health cache (state.DeviceHealth)."""

    health: str
    message: str
    arrived: float  # time.monotonic() of the report: the kubelet's LastUpdated
    timeout: float


@dataclass
class HealthReport:
    arrived: float
    driver: str
    devices: dict[tuple[str, str], tuple[str, str, int]]  # (pool, device) -> (health, message, timeout)


class KubeletDraStandin:
    def __init__(self, registry_dir: str, node: str, api: FakeApiServer | None = None,
                 kubernetes: str = "1.36", health_retry: float = 5.0) -> None:
        self.registry_dir = registry_dir
        self.node = node
        self.api = api
        self.kubernetes = kubernetes
        self.health_retry = health_retry
        self.health_cache: dict[str, dict[tuple[str, str], DeviceHealth]] = {}  # driver -> devices
        self.reports: list[HealthReport] = []
        self.health_streams: dict[str, str] = {}  # driver -> the service name of its open stream
        self.health_errors: list[str] = []
        self._health_tasks: dict[str, asyncio.Task[None]] = {}  # endpoint -> its health stream
        self.plugins: dict[str, list[tuple[str, str]]] = {}  # driver -> [(registration socket, endpoint)]
        self.refused: list[str] = []
        self._seen: dict[str, tuple[int, int]] = {}  # socket path -> (inode, ctime) registered
        self.registrations = 0  # registrations completed (a test waits for the next one)
        self._task: asyncio.Task[None] | None = None
        self._channels: list[Channel] = []
        self._stubs: dict[str, DRAPluginStub] = {}

    @property
    def registered(self) -> dict[str, str]:
        """Driver -> the endpoint calls go to."""
        return {driver: self._pick(driver) for driver, plugins in self.plugins.items() if plugins}

    def endpoints(self, driver: str) -> list[str]:
        return [endpoint for _, endpoint in self.plugins.get(driver, ())]

    def _pick(self, driver: str) -> str:
        plugins = self.plugins[driver]
        for _, endpoint in reversed(plugins):
            if os.path.exists(endpoint):
                return endpoint
        return plugins[-1][1]

    def _deregister(self, path: str) -> None:
        for driver, plugins in list(self.plugins.items()):
            for entry in [p for p in plugins if p[0] == path]:
                plugins.remove(entry)
                self._stubs.pop(entry[1], None)
                task = self._health_tasks.pop(entry[1], None)
                if task is not None:  # the kubelet cancels the plugin's health stream on removal
                    task.cancel()
            if not plugins:
                del self.plugins[driver]

    async def start(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._health_tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._health_tasks.clear()
        self.health_streams.clear()
        self.health_cache.clear()
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    async def restart(self) -> None:
        """Kubelet restart: slices wiped, every plugin registered again."""
        await self.stop()
        self.plugins.clear()
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
                # inode and ctime: a socket made again (a daemon restarted after SIGKILL) may get
                # the same inode number; the kubelet sees its inotify Create event either way
                if stat.S_ISSOCK(st.st_mode) and self._seen.get(path) != (st.st_ino, st.st_ctime_ns):
                    self._seen[path] = (st.st_ino, st.st_ctime_ns)
                    try:
                        await self._register(path)
                    except (OSError, asyncio.TimeoutError) as exc:
                        self.refused.append(f"{path}: {exc}")
                        self._seen.pop(path, None)
            for path in [p for p in self._seen if os.path.basename(p) not in names]:
                del self._seen[path]
                self._deregister(path)
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
            elif info.endpoint in [e for p, e in self.plugins.get(info.name, ()) if p != path]:
                error = f"endpoint {info.endpoint} already registered for DRA driver plugin {info.name}"
            await asyncio.wait_for(stub.NotifyRegistrationStatus(
                rpb.RegistrationStatus(plugin_registered=not error, error=error)), 5)
            self._deregister(path)  # a socket registered again replaces its old registration
            if error:
                self.refused.append(error)
            else:
                self.plugins.setdefault(info.name, []).append((path, info.endpoint))
                self.registrations += 1
                self._start_health(info.name, info.endpoint, list(info.supported_versions))
        finally:
            channel.close()

    # --- device health (ResourceHealthStatus) ---------------------------------------------------
    def _health_service(self, supported: list[str]) -> str:
        if self.kubernetes == "1.36":
            return HEALTH_V1ALPHA1  # 1.36 does not look at GetInfo for it
        for service in (HEALTH_V1, HEALTH_V1ALPHA1):  # 1.37: pickHealthService, v1 first
            if service in supported:
                return service
        return ""

    def _start_health(self, driver: str, endpoint: str, supported: list[str]) -> None:
        """One stream per registered plugin (endpoint), as the kubelet opens one per connection."""
        old = self._health_tasks.pop(endpoint, None)
        if old is not None:
            old.cancel()
        service = self._health_service(supported)
        if service:
            self._health_tasks[endpoint] = asyncio.create_task(self._watch_health(driver, endpoint, service))

    async def _watch_health(self, driver: str, endpoint: str, service: str) -> None:
        """wait.UntilWithContext(..., 5 s) around NodeWatchResources + HandleWatchResourcesStream."""
        while True:
            channel = Channel(path=endpoint)
            try:
                stub: Any = (drahealth_v1_grpc.DRAResourceHealthStub(channel) if service == HEALTH_V1
                             else drahealth_v1alpha1_grpc.DRAResourceHealthStub(channel))
                request = (drahealth_v1_pb2 if service == HEALTH_V1 else drahealth_v1alpha1_pb2) \
                    .NodeWatchResourcesRequest()
                async with stub.NodeWatchResources.open() as stream:
                    await stream.send_message(request, end=True)
                    self.health_streams[driver] = service
                    async for response in stream:
                        self._take_health(driver, response)
            except (GRPCError, StreamTerminatedError, OSError, ConnectionError) as exc:
                self.health_errors.append(f"{driver}: {type(exc).__name__}: {exc}")
            finally:
                channel.close()
                self.health_streams.pop(driver, None)
                self.health_cache.pop(driver, None)  # manager.go: clearDriver on stream exit
            await asyncio.sleep(self.health_retry)

    def _take_health(self, driver: str, response: Any) -> None:
        """healthinfo.go updateHealthInfo: every reported device stamped with the arrival time."""
        now = time.monotonic()
        cache = self.health_cache.setdefault(driver, {})
        report = HealthReport(now, driver, {})
        for device in response.devices:
            key = (device.device.pool_name, device.device.device_name)
            seconds = device.health_check_timeout_seconds
            timeout = float(seconds) if seconds > 0 else DEFAULT_HEALTH_TIMEOUT
            message = device.message if len(device.message) <= 1024 else device.message[:1021] + "..."
            health = HEALTH_NAMES.get(device.health, "Unknown")
            cache[key] = DeviceHealth(health, message, now, timeout)
            report.devices[key] = (health, message, seconds)
        self.reports.append(report)

    def health(self, driver: str, pool: str, device: str) -> tuple[str, str]:
        """(health, message) as getHealthInfo gives it to the pod's status; Unknown when stale."""
        known = self.health_cache.get(driver, {}).get((pool, device))
        if known is None or time.monotonic() - known.arrived > known.timeout:
            return "Unknown", ""
        return known.health, known.message

    def _stub(self, driver: str, endpoint: str | None = None) -> DRAPluginStub:
        """One connection per endpoint, kept, as the kubelet keeps its gRPC connection. Without
        ``endpoint``, the one the kubelet would pick; with it, that plugin (it must be registered)."""
        if endpoint is None:
            endpoint = self.registered[driver]
        elif endpoint not in self.endpoints(driver):
            raise KeyError(f"{endpoint} is not registered for {driver}")
        if endpoint not in self._stubs:
            channel = Channel(path=endpoint)
            self._channels.append(channel)
            self._stubs[endpoint] = DRAPluginStub(channel)
        return self._stubs[endpoint]

    async def prepare(self, driver: str, *claims: tuple[str, str, str],
                      endpoint: str | None = None) -> dpb.NodePrepareResourcesResponse:
        """Claims as (namespace, name, uid)."""
        return await self._stub(driver, endpoint).NodePrepareResources(dpb.NodePrepareResourcesRequest(
            claims=[dpb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]),
            timeout=CALL_TIMEOUT)

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

    async def unprepare(self, driver: str, *claims: tuple[str, str, str],
                        endpoint: str | None = None) -> dpb.NodeUnprepareResourcesResponse:
        return await self._stub(driver, endpoint).NodeUnprepareResources(dpb.NodeUnprepareResourcesRequest(
            claims=[dpb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]),
            timeout=CALL_TIMEOUT)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Wait until ``predicate()``; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
