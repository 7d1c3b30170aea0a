"""DRA mode's daemon: one asyncio loop wiring watcher -> rescan -> slices, CDI and the kubelet plugin.

The same one-way flow as device-plugin mode, reusing its pieces unchanged: the inotify
``Watcher`` (dev dir, config dir, and here the kubelet's ``plugins_registry``), ``discovery``
and the config loader. A burst of events becomes one rescan after a short quiet period; a rescan
turns the inventory into DRA devices (``devices.py``), rewrites the node-wide CDI spec if it
changed, and hands the devices to the publisher, which makes the fewest API writes. Prepared
claims live in the node service and its checkpoint and never wait for the API server. A device
that goes stays through ``--removal-grace`` (``unplugged.py``: tainted in the slice, Unhealthy on
the health stream that ``health.py`` serves on the DRA socket); the worker also wakes when a
grace ends.

Rolling updates (``--pod-uid``): two daemons may run on a node at once, the new pod beside the
old. Each serves its own sockets, named with its pod's UID (``<driver>-<uid>-reg.sock`` and
``<plugins>/<driver>/dra-<uid>.sock``, the names the Go helper uses; the kubelet keeps both
registrations and calls the newest connected one). ``locks.py`` serializes their prepares and
lets one of them publish; the other is ready too (standing by) so that the rollout can go on.

Ready (``/readyz``) means: the kubelet accepted our registration, the API server took our slices
and the watch on them runs, and the last config was valid. Otherwise 503 with the reasons.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from smarter_device_manager import __version__, cdi
from smarter_device_manager.config import reread
from smarter_device_manager.discovery import KIND_DIRECTORY, directory_nodes, discover
from smarter_device_manager.dra.boundnames import BoundNames
from smarter_device_manager.dra.devices import DraDevice, Paths, cdi_device, dra_devices, keep_names
from smarter_device_manager.dra.health import HealthService, report
from smarter_device_manager.dra.kube import Cluster, KubeClient, within
from smarter_device_manager.dra.locks import CLAIMS_LOCK, POLL, PUBLISHER_LOCK, FileLock
from smarter_device_manager.dra.node import Checkpoint, NodeService, cdi_dir_problem
from smarter_device_manager.dra.publisher import Publisher
from smarter_device_manager.dra.registration import Registration
from smarter_device_manager.dra.slices import fit
from smarter_device_manager.dra.supervise import FAMILY, Supervisor
from smarter_device_manager.dra.unplugged import Unplugged
from smarter_device_manager.grpclibserver import GrpclibServer
from smarter_device_manager.http import HttpServer
from smarter_device_manager.metrics import Metrics, Sample
from smarter_device_manager.rules import Config, ConfigError
from smarter_device_manager.watch import Watcher

log = logging.getLogger(__name__)

QUIET = 0.02
MAX_DELAY = 0.25

FAMILIES: dict[str, tuple[str, str]] = {
    "build_info": ("gauge", "Version of the running daemon."),
    "dra_devices": ("gauge", "Devices this node publishes in its ResourceSlices."),
    "dra_unplugged_devices": ("gauge", "Devices gone from the node, kept tainted through the removal grace."),
    "dra_prepared_claims": ("gauge", "ResourceClaims prepared on this node (in the checkpoint)."),
    "dra_registered": ("gauge", "1 once the kubelet accepted our plugin registration."),
    "dra_slices_in_sync": ("gauge", "1 when the API server holds exactly our slices."),
    "dra_publishing": ("gauge", "1 while this instance is the one on its node that writes the slices."),
    "config_valid": ("gauge", "1 if the last config read was valid, 0 if it was rejected."),
    "dra_slice_writes_total": ("counter", "ResourceSlice writes to the API server, by verb."),
    "dra_slices_deleted_by_others_total": ("counter", "Our slices deleted by others (the kubelet at start)."),
    "dra_prepares_total": ("counter", "Claims prepared (NodePrepareResources), by result."),
    "dra_unprepares_total": ("counter", "Claims unprepared (NodeUnprepareResources), by result."),
    "dra_watch_ended_empty_total": ("counter", "Slice watches that ended at once without any event."),
    "dra_api_errors_total": ("counter", "Failed API server calls, by verb and HTTP status (0: unreachable)."),
    "dra_registrations_total": ("counter", "Registration verdicts from the kubelet, by result."),
    "config_reloads_total": ("counter", "Config files read after start, by result."),
    "hotplug_events_total": ("counter", "Filesystem events seen under the dev directory."),
    "rescans_total": ("counter", "Walks of the dev directory, by reason."),
    **FAMILY,
}


@dataclass(frozen=True)
class DraSettings:
    config_path: str | None
    config_watch_dir: str | None
    dev_dir: str
    host_dev_dir: str
    sys_dir: str
    prefix: str
    pass_device_specs: bool
    driver: str
    node: str
    plugins_dir: str
    registry_dir: str
    cdi_dir: str
    state_dir: str
    http_host: str | None = None
    http_port: int = 0
    removal_grace: float = 300.0
    unplugged_taint_effect: str = "NoSchedule"
    pod_uid: str = ""

    @property
    def endpoint(self) -> str:
        uid = f"-{self.pod_uid}" if self.pod_uid else ""
        return os.path.join(self.plugins_dir, self.driver, f"dra{uid}.sock")

    @property
    def registration_socket(self) -> str:
        uid = f"-{self.pod_uid}" if self.pod_uid else ""
        return os.path.join(self.registry_dir, f"{self.driver}{uid}-reg.sock")


class DraDaemon:
    def __init__(self, settings: DraSettings, config: Config, cluster: Cluster) -> None:
        s = self.settings = settings
        self.config = config
        self.config_error: ConfigError | None = None
        self._last_config_data = config.text.encode("utf-8")
        self.metrics = Metrics(FAMILIES)
        self.metrics.collectors.append(self._samples)
        self.supervisor = Supervisor(self.metrics)
        self.client = KubeClient(cluster)
        self.cluster = cluster
        self.paths = Paths(s.dev_dir, s.host_dev_dir, s.sys_dir)
        self.devices: dict[str, DraDevice] = {}
        self.names = BoundNames(s.state_dir)  # DRA name -> the fingerprint it was published for
        self.checkpoint = Checkpoint(s.state_dir)
        self.publisher_lock = FileLock(os.path.join(s.state_dir, PUBLISHER_LOCK))
        self.node = NodeService(s.driver, s.node, self.client, lambda: self.devices, self.refresh_spec,
                                self.paths, s.prefix, s.cdi_dir, self.checkpoint, self.metrics,
                                FileLock(os.path.join(s.state_dir, CLAIMS_LOCK)))
        self.unplugged = Unplugged(s.driver, s.removal_grace, s.unplugged_taint_effect)
        self.health = HealthService(lambda: report(s.node, self.devices, self.unplugged.gone,
                                                   s.removal_grace, time.time()))
        self.publisher = Publisher(self.client, s.node, s.driver, self.metrics,
                                   on_first_list=self._adopt_unplugged)
        self.registered = False
        self.registration_error = ""
        self.cdi_error: str | None = None
        self._dra_server = GrpclibServer([self.node, self.health], s.endpoint)
        self._reg_server = GrpclibServer(Registration(s.driver, s.endpoint, self._registration),
                                        s.registration_socket)
        self._problems: frozenset[str] = frozenset()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_event = 0.0
        self._dev_dirty = self._config_dirty = self._sockets_dirty = False
        self._watcher: Watcher | None = None
        self.http: HttpServer | None = None

    # --- Sink of the watcher -------------------------------------------------------------
    def _poke(self) -> None:
        self._last_event = asyncio.get_running_loop().time()
        self._wake.set()

    def dev_changed(self) -> None:
        self.metrics.inc("hotplug_events_total")
        self._dev_dirty = True
        self._poke()

    def config_changed(self) -> None:
        self._config_dirty = True
        self._poke()

    def kubelet_started(self) -> None:  # no kubelet.sock in plugins_registry: nothing to do
        pass

    def cdi_changed(self) -> None:  # DRA mode does not ask the watcher to watch a CDI spec
        pass

    def kubelet_stopped(self) -> None:
        self._sockets_dirty = True
        self._poke()

    def socket_deleted(self, name: str) -> None:
        self._sockets_dirty = True
        self._poke()

    def overflow(self) -> None:
        self.metrics.inc("rescans_total", reason="overflow")
        self._dev_dirty = self._config_dirty = self._sockets_dirty = True
        self._poke()

    def hangup(self) -> None:
        log.info("SIGHUP: rescanning and publishing again")
        self._dev_dirty = self._config_dirty = self._sockets_dirty = True
        self.publisher.listed = False
        self._poke()

    def _registration(self, registered: bool, error: str) -> None:
        self.metrics.inc("dra_registrations_total", result="success" if registered else "failure")
        if registered:
            if not self.registered:
                log.info("the kubelet registered DRA driver %s (endpoint %s)", self.settings.driver,
                         self.settings.endpoint)
            self.registered, self.registration_error = True, ""
            self.publisher.enable()
        else:
            self.registered, self.registration_error = False, error
            log.error("the kubelet refused our registration: %s", error)

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        s = self.settings
        # Not the CDI directory: as in device-plugin mode (deviceplugin/cdisync.py), one the
        # container runtime does not read would make every CDI name unresolvable, so a missing
        # one is reported (log, /readyz, the failed prepares) rather than created.
        for directory in (s.registry_dir, os.path.dirname(s.endpoint), s.state_dir):
            os.makedirs(directory, exist_ok=True)
        self.checkpoint.load()
        self.names.load()
        if self.checkpoint.claims:
            log.info("checkpoint: %d prepared claims (%s)", len(self.checkpoint.claims),
                     ", ".join(f"{c['namespace']}/{c['name']}" for c in self.checkpoint.claims.values()))
        self._watcher = Watcher(self, s.dev_dir, s.registry_dir, s.config_watch_dir)
        if s.http_host is not None:
            self.http = HttpServer({"/healthz": self._healthz, "/readyz": self._readyz,
                                    "/metrics": self._metrics})
            await self.http.start(s.http_host, s.http_port)
            log.info("HTTP listener on %s:%d (/healthz /readyz /metrics)", s.http_host or "*",
                     self.http.port)
        log.info("smarter-device-manager %s in DRA mode: driver %s, node %s, config %s (%d rules), "
                 "dev dir %s, API server %s (%s)", __version__, s.driver, s.node, self.config.source,
                 len(self.config.rules), s.dev_dir, self.cluster.url, self.cluster.source)
        self._rescan("start")
        await self._dra_server.serve()
        await self._reg_server.serve()
        log.info("serving %s; registering through %s", s.endpoint, s.registration_socket)
        tasks = [self.supervisor.start("the rescan worker", self._work),
                 asyncio.create_task(self.publisher.run(self.supervisor), name="publisher"),
                 self.supervisor.start("the publisher lock", self._lead, once=True)]
        await self._stop.wait()
        log.info("stopping: removing our sockets (the slices stay: the kubelet removes them if we do not "
                 "come back)")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.close()
        await self._reg_server.stop()
        await self._dra_server.stop()
        await self.client.close()
        self.publisher_lock.close()
        self.node.lock.close()
        if self.http is not None:
            await self.http.stop()
        log.info("stopped")
        return 0

    async def _lead(self) -> None:
        """Become the one daemon on this node that writes slices (``publisher.lock``), waiting
        for as long as another holds it; the lock goes with this process."""
        if not self.publisher_lock.try_acquire():
            log.info("another instance of the driver on this node publishes the ResourceSlices (it holds "
                     "%s); standing by to take over when it stops", self.publisher_lock.path)
            await self.publisher_lock.acquire(None, POLL)
            log.info("the other instance stopped: this one publishes the ResourceSlices now")
        self.publisher.lead()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        if self._dev_dirty or self._config_dirty or self._sockets_dirty:
            self._wake.set()  # started again after a bug: what it had not done yet
        while True:
            due = self.unplugged.next_expiry()  # a grace ends: wake without an event
            try:
                await within(self._wake.wait(), None if due is None else max(0, due - time.time()))
            except asyncio.TimeoutError:
                self._expire()
                continue
            first = loop.time()
            while True:
                now = loop.time()
                quiet_left = self._last_event + QUIET - now
                if quiet_left <= 0 or now - first >= MAX_DELAY:
                    break
                await asyncio.sleep(min(quiet_left, first + MAX_DELAY - now))
            self._wake.clear()
            await self._settle()  # a bug: logged, shown and retried by the supervisor (supervise.py)

    async def _settle(self) -> None:
        config_dirty, self._config_dirty = self._config_dirty, False
        dev_dirty, self._dev_dirty = self._dev_dirty, False
        sockets_dirty, self._sockets_dirty = self._sockets_dirty, False
        try:
            await self._apply(config_dirty, dev_dirty, sockets_dirty)
        except BaseException:
            # Work is dropped only once it is done: the restarted worker picks it up again.
            self._config_dirty |= config_dirty
            self._dev_dirty |= dev_dirty
            self._sockets_dirty |= sockets_dirty
            raise

    async def _apply(self, config_dirty: bool, dev_dirty: bool, sockets_dirty: bool) -> None:
        if config_dirty and self._reload_config():
            dev_dirty = True
        if sockets_dirty:
            if not self._dra_server.present() or not self._reg_server.present():
                log.info("our sockets were deleted; serving them again")
            await self._dra_server.serve()
            await self._reg_server.serve()
        if dev_dirty:
            self._rescan("hotplug")

    def _reload_config(self) -> bool:
        """Read the config again (config.reread, device-plugin mode's rules: an empty file is
        ignored, an invalid one is rejected and the last good one kept); True if one was taken."""
        found = reread(self.settings.config_path, self._last_config_data)
        if found is None:
            return False
        path, self._last_config_data, config = found
        if isinstance(config, ConfigError):
            self.config_error = config
            self.metrics.inc("config_reloads_total", result="rejected")
            log.error("config %s rejected; still publishing the last good config (%s):\n  %s", path,
                      self.config.source, "\n  ".join(config.problems))
            return False
        self.config, self.config_error = config, None
        self.metrics.inc("config_reloads_total", result="applied")
        log.info("config %s reloaded: %d rules", path, len(config.rules))
        for warning in config.warnings:
            log.warning("config: %s", warning)
        return True

    def _rescan(self, reason: str) -> None:
        s = self.settings
        self.metrics.inc("rescans_total", reason=reason)
        inventory = discover(s.dev_dir, self.config, s.prefix, s.sys_dir, s.pass_device_specs)
        if self._watcher is not None:
            self._watcher.sync_dev_dirs(inventory.directories)
        devices, problems = dra_devices(inventory, s.prefix, s.dev_dir, s.sys_dir)
        self.names.refresh()  # names another daemon (a rolling update's other pod) bound
        devices = keep_names(devices, self.names.bound)
        self.names.save()
        devices, unfit = fit(devices)  # what the API server would refuse stays out, said
        problems += unfit
        fresh = frozenset(inventory.problems) | frozenset(problems)
        for problem in sorted(fresh - self._problems):
            log.warning("%s", problem)
        self._problems = fresh
        old = self.devices
        before = set(old)
        self.devices = {d.name: d for d in devices}
        added, removed = set(self.devices) - before, before - set(self.devices)
        went, back = self.unplugged.update(
            old, self.devices, lambda d: self.config.selects(d.resource.rule, d.resource.path), time.time())
        if went:
            log.warning("unplugged: %s; tainted %s (%s) in the ResourceSlice and Unhealthy for %gs unless "
                        "they come back", ", ".join(went), self.unplugged.key, self.unplugged.effect,
                        s.removal_grace)
        if back:
            log.info("back: %s; untainted and Healthy again", ", ".join(back))
        if added or removed or reason == "start":
            log.info("%d devices: %s%s", len(devices), ", ".join(sorted(self.devices)) or "none",
                     f" (new: {', '.join(sorted(added)) or '-'}; gone: {', '.join(sorted(removed)) or '-'})"
                     if reason != "start" else "")
        self.refresh_spec()
        self._publish()

    def _publish(self) -> None:
        self.publisher.set_devices(list(self.devices.values()), self.unplugged.entries())
        self.health.changed()

    def _expire(self) -> None:
        over = self.unplugged.expire(time.time())
        if over:
            log.info("removal grace over: %s left the ResourceSlice", ", ".join(over))
            self._publish()

    def _adopt_unplugged(self, observed: dict[str, dict[str, Any]]) -> None:
        """First list of our slices: devices still tainted there but not here are in their grace."""
        taken = self.unplugged.adopt(observed, self.devices, time.time())
        if taken:
            log.info("still in their removal grace (tainted in our slices, not on the node): %s",
                     ", ".join(taken))
            self._publish()
            self._wake.set()  # the worker times the end of their grace

    def refresh_spec(self) -> None:
        """Write the node-wide CDI spec (``<driver>/device``) for the devices as they are now.

        Each device is built alone first, so one that no runtime would accept (a node gone
        between the scan and now) is left out and said, and the others stay usable. Pool
        members are not in it: their edits depend on the claim (see node.py).
        """
        s = self.settings
        kind = f"{s.driver}/device"
        good = []
        for device in self.devices.values():
            if device.member is not None:
                continue
            nodes = None
            if device.resource.kind == KIND_DIRECTORY:
                nodes, _ = directory_nodes(s.dev_dir, device.resource.path)
            entry = cdi_device(device, self.paths, s.prefix, nodes)
            try:
                cdi.build_spec(kind, [entry])
            except cdi.CdiError as exc:
                log.warning("CDI: %s", exc)
                continue
            good.append(entry)
        file_name = cdi.spec_file_name(kind)
        problem = cdi_dir_problem(s.cdi_dir)
        if problem is None:
            try:
                if good:
                    cdi.write_spec(s.cdi_dir, file_name, cdi.build_spec(kind, good))
                else:
                    cdi.remove_spec(s.cdi_dir, file_name)
            except (OSError, cdi.CdiError) as exc:
                problem = f"cannot write the CDI spec {s.cdi_dir}/{file_name}: {exc}"
        if problem != self.cdi_error:
            if problem is not None:
                log.error("%s", problem)
            elif self.cdi_error is not None:
                log.info("CDI spec %s/%s written again", s.cdi_dir, file_name)
        self.cdi_error = problem

    # --- read-only views ---------------------------------------------------------------
    def _samples(self) -> list[Sample]:
        return [
            ("build_info", (("version", __version__),), 1.0),
            ("config_valid", (), 0.0 if self.config_error else 1.0),
            ("dra_devices", (), float(len(self.devices))),
            ("dra_unplugged_devices", (), float(len(self.unplugged.gone))),
            ("dra_prepared_claims", (), float(len(self.checkpoint.claims))),
            ("dra_registered", (), 1.0 if self.registered else 0.0),
            ("dra_slices_in_sync", (), 1.0 if self.publisher.in_sync else 0.0),
            ("dra_publishing", (), 1.0 if self.publisher.leading else 0.0),
        ]

    def _healthz(self) -> tuple[int, str, str]:
        return 200, "text/plain", "ok\n"

    def readiness(self) -> list[str]:
        reasons = []
        if self.config_error is not None:
            reasons.append(f"config rejected: {'; '.join(self.config_error.problems)}")
        if not self.registered:
            reasons.append("not registered with the kubelet" + (
                f": {self.registration_error}" if self.registration_error else
                f" yet (waiting for its plugin watcher to find {self.settings.registration_socket})"))
        cdi_problem = cdi_dir_problem(self.settings.cdi_dir) or self.cdi_error
        if cdi_problem:
            reasons.append(cdi_problem)
        if not self.publisher.leading:
            return reasons  # standing by: the other instance publishes, and this one can prepare
        if self.publisher.error:
            reasons.append(f"API server: {self.publisher.error}")
        elif self.registered and not self.publisher.in_sync:
            reasons.append("ResourceSlices not published yet")
        if self.publisher.watch_problem:
            reasons.append(self.publisher.watch_problem)
        elif self.registered and not self.publisher.watching and not self.publisher.error:
            reasons.append("the watch on our ResourceSlices is not running")
        return reasons + self.supervisor.reasons()

    def _readyz(self) -> tuple[int, str, str]:
        reasons = self.readiness()
        if reasons:
            return 503, "text/plain", "not ready:\n" + "".join(f"- {r}\n" for r in reasons)
        published = "published" if self.publisher.leading else \
            "found (another instance publishes them; standing by)"
        return 200, "text/plain", (f"ready: registered with the kubelet, {len(self.devices)} devices "
                                   f"{published}, {len(self.checkpoint.claims)} claims prepared\n")

    def _metrics(self) -> tuple[int, str, str]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()
