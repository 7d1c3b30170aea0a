"""Reconcile: desired resources vs running plugin servers.

The only place running state changes. Given the inventory of one discovery
walk, it starts a plugin (server + registration) for each new resource,
updates the ones that changed (one ListAndWatch message each, and only if the
advertised list changed), and handles the ones that are no longer desired:

* the device vanished but a rule still matches its path: its IDs turn
  ``Unhealthy`` at once (allocatable 0, capacity kept, running pods untouched)
  and the plugin is kept for ``removal_grace`` seconds so the same device coming
  back (a USB adapter re-plugged) turns healthy again with the same IDs;
* no rule matches it any more (config edited): withdrawn at once.

Resources whose rule and device did not change keep their server, stream and
IDs untouched. A pool's member IDs are pinned to their devices across rescans
(:mod:`~smarter_device_manager.pinning`): an ID the kubelet may still count (its
device present, or unplugged within the grace) never moves to another device, and the
pins are kept on disk (:mod:`~smarter_device_manager.deviceplugin.pinstore`) so that holds
across a daemon restart too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from smarter_device_manager.deviceplugin.pinstore import Pins, PinStore
from smarter_device_manager.deviceplugin.plugin import DevicePlugin, Paths, PluginServer
from smarter_device_manager.deviceplugin.registrar import Registrar
from smarter_device_manager.discovery import KIND_POOL, Inventory, Member, Resource
from smarter_device_manager.metrics import Metrics, Sample
from smarter_device_manager.naming import socket_name
from smarter_device_manager.pinning import pin
from smarter_device_manager.rules import Config

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Running:
    server: PluginServer
    endpoint: str
    vanished_since: float | None = None
    # Pools only: members unplugged, by identity -> (member, since when); kept
    # Unhealthy for the removal grace like a whole vanished resource.
    gone: dict[str, tuple[Member, float]] | None = None
    # Pools only: serials seen on two members at once (they no longer name one device).
    shared: set[str] | None = None

    @property
    def plugin(self) -> DevicePlugin:
        return self.server.plugin


class Reconciler:
    def __init__(
        self,
        prefix: str,
        paths: Paths,
        plugin_dir: str,
        registrar: Registrar,
        metrics: Metrics,
        removal_grace: float,
        pins: PinStore | None = None,
    ) -> None:
        self.prefix = prefix
        self.paths = paths
        self.plugin_dir = plugin_dir
        self.registrar = registrar
        self.metrics = metrics
        self.removal_grace = removal_grace
        self.pins = pins
        self.running: dict[str, Running] = {}
        self._endpoints: set[str] = set()  # socket file names in use, for O(1) event filtering
        self.start_errors: dict[str, str] = {}
        self._messages_of_withdrawn = 0
        metrics.collectors.append(self.samples)

    async def apply(self, inventory: Inventory, config: Config, now: float) -> None:
        # What goes, first: it is quick and frees sockets; then what changed or is new.
        withdrawals = []
        for name, running in list(self.running.items()):
            if name in inventory.resources:
                continue
            resource = running.plugin.resource
            if not config.selects(resource.rule, resource.path):
                withdrawals.append(self._withdraw(name, "no rule matches it any more"))
                continue
            if running.vanished_since is None and self.removal_grace > 0:
                running.vanished_since = now
                running.plugin.update(resource, healthy=False, gone=running.plugin.gone)
                log.warning("%s: %s is gone; devices reported Unhealthy, withdrawn in %gs "
                            "unless it comes back", running.plugin.resource_name, resource.where,
                            self.removal_grace)
            if running.vanished_since is None or now - running.vanished_since >= self.removal_grace:
                withdrawals.append(self._withdraw(name, f"gone for {self.removal_grace:g}s"))
        # Together, not one after another: each waits briefly for its stream to end.
        await asyncio.gather(*withdrawals)
        # A resource that could not be served and is no longer wanted is no longer a problem.
        for name in [n for n in self.start_errors if n not in inventory.resources]:
            if name not in self.running:
                del self.start_errors[name]
        for name, resource in inventory.resources.items():
            existing = self.running.get(name)
            if existing is None:
                await self._start(name, resource, now)
            else:
                self._refresh(existing, resource, now)
        if self.pins is not None:
            self.pins.record(self._pins(), now)

    def _pins(self) -> dict[str, Pins]:
        """The running pools' pins, for the state file: a pool gone as a whole counts its
        members as gone since it went."""
        pools = {}
        for name, running in self.running.items():
            resource = running.plugin.resource
            if resource.kind != KIND_POOL:
                continue
            gone = dict(running.gone or {})
            present = resource.members
            if running.vanished_since is not None:
                gone.update((m.identity, (m, running.vanished_since)) for m in present)
                present = ()
            pools[name] = Pins(present, gone, set(running.shared or ()))
        return pools

    def _refresh(self, running: Running, resource: Resource, now: float) -> None:
        """A resource still there: tell the kubelet only if its advertised list changed."""
        came_back = running.vanished_since is not None
        running.vanished_since = None
        old = running.plugin.resource
        if resource.kind == KIND_POOL:
            held = old.members + tuple(m for m, since in (running.gone or {}).values()
                                       if now - since < self.removal_grace)
            running.shared = running.shared or set()
            resource = replace(resource, members=pin(resource.members, held, running.shared))
        gone = self._pool_gone(running, resource, now) if resource.kind == KIND_POOL else ()
        if running.plugin.update(resource, healthy=True, gone=gone):
            if came_back:
                log.info("%s is back: %s, devices healthy again",
                         running.plugin.resource_name, resource.where)
            elif resource.kind == KIND_POOL:
                log.info("%s now has %d devices (%d unplugged): %s", running.plugin.resource_name,
                         len(resource.members), len(gone),
                         " ".join(f"{m.identity}=/dev/{m.path}" for m in resource.members))
            else:
                log.info("%s now has %d devices (was %d)",
                         running.plugin.resource_name, resource.count, old.count)

    def _pool_gone(self, running: Running, resource: Resource, now: float) -> tuple[Member, ...]:
        """Pool members unplugged within the grace: they stay listed, Unhealthy, so the
        kubelet keeps their IDs (a re-plug makes them Healthy again)."""
        present = {m.identity for m in resource.members}
        gone = running.gone or {}
        for member in running.plugin.resource.members:
            if member.identity not in present and member.identity not in gone and self.removal_grace > 0:
                gone[member.identity] = (member, now)
                log.warning("%s: device %s (/dev/%s) is gone; its IDs reported Unhealthy, dropped in "
                            "%gs unless it comes back", running.plugin.resource_name, member.identity,
                            member.path, self.removal_grace)
        for identity, (_, since) in list(gone.items()):
            if identity in present or now - since >= self.removal_grace:
                del gone[identity]
        running.gone = gone or None
        return tuple(member for member, _ in gone.values())

    def serves(self, endpoint: str) -> bool:
        """Is ``endpoint`` (a file name in the plugin dir) one of our running sockets?"""
        return endpoint in self._endpoints

    def next_removal(self) -> float | None:
        """When the next vanished resource is due to be withdrawn."""
        times = [r.vanished_since for r in self.running.values() if r.vanished_since is not None]
        times += [since for r in self.running.values() if r.gone for _, since in r.gone.values()]
        return min(times) + self.removal_grace if times else None

    async def resync_sockets(self, kubelet_restarted: bool) -> None:
        """Serve again on any socket that vanished, then register what needs it.

        The kubelet deletes every socket in its directory when it starts, so
        this runs before registering: the kubelet dials us right after Register.
        """
        lost = {n: r for n, r in self.running.items() if not r.server.present()}
        if kubelet_restarted:
            for name, running in self.running.items():
                if name not in lost:
                    self.registrar.request(running.plugin.resource_name, running.endpoint)
        # Old servers down together (each may wait briefly for its stream), then up again.
        await asyncio.gather(*(r.server.stop(end_streams=True) for r in lost.values()))
        if lost:
            shown = ", ".join(sorted(r.endpoint for r in lost.values())[:5])
            log.info("%d of our sockets were removed (%s%s); serving them again", len(lost), shown,
                     ", ..." if len(lost) > 5 else "")
        for name, running in lost.items():
            try:
                await running.server.start()
            except OSError as exc:
                self.start_errors[name] = f"cannot serve on {running.server.socket_path}: {exc}"
                log.error("%s: %s", running.plugin.resource_name, self.start_errors[name])
                continue
            self.start_errors.pop(name, None)
            self.registrar.request(running.plugin.resource_name, running.endpoint)

    def reregister_all(self) -> None:
        for running in self.running.values():
            self.registrar.request(running.plugin.resource_name, running.endpoint)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self._withdraw(n, "shutting down", quiet=True) for n in list(self.running)))

    async def _start(self, name: str, resource: Resource, now: float) -> None:
        resource_name = f"{self.prefix}/{name}"
        shared: set[str] | None = None
        gone: dict[str, tuple[Member, float]] = {}
        if resource.kind == KIND_POOL:
            # Pins from before a daemon restart: what was held then is held now (its removal
            # grace goes on), so a held ID never comes back naming another device.
            saved = self.pins.saved(name, now) if self.pins is not None else Pins()
            shared = saved.shared
            held = tuple(m for m, _ in saved.gone.values())
            resource = replace(resource, members=pin(resource.members, held, shared))
            present = {m.identity for m in resource.members}
            gone = {i: g for i, g in saved.gone.items() if i not in present}
        endpoint = socket_name(self.prefix, name, self.plugin_dir)
        plugin = DevicePlugin(resource_name, resource, self.paths, self._allocated)
        if gone:
            plugin.update(resource, healthy=True, gone=tuple(m for m, _ in gone.values()))
            log.warning("%s: devices %s held before the restart are not here; their IDs reported "
                        "Unhealthy until they come back or the removal grace ends", resource_name,
                        ", ".join(sorted(gone)))
        server = PluginServer(plugin, f"{self.plugin_dir.rstrip('/')}/{endpoint}")
        try:
            await server.start()
        except OSError as exc:
            self.start_errors[name] = f"cannot serve on {server.socket_path}: {exc}"
            log.error("%s: %s", resource_name, self.start_errors[name])
            return
        self.start_errors.pop(name, None)
        self.running[name] = Running(server, endpoint, gone=gone or None, shared=shared)
        self._endpoints.add(endpoint)
        log.info("serving %s: %d devices for %s (%s, rule %d) on %s", resource_name,
                 len(plugin.device_ids()), resource.where, resource.kind, resource.rule.index, endpoint)
        self.registrar.request(resource_name, endpoint)

    async def _withdraw(self, name: str, why: str, quiet: bool = False) -> None:
        running = self.running.pop(name)
        self._endpoints.discard(running.endpoint)
        self.start_errors.pop(name, None)
        if not quiet:
            log.info("withdrew %s: %s", running.plugin.resource_name, why)
        self.registrar.cancel(running.plugin.resource_name)
        await running.server.stop(end_streams=True)
        self._messages_of_withdrawn += running.plugin.messages_sent

    def _allocated(self, resource_name: str, device_ids: list[str], paths: list[str],
                   error: str | None) -> None:
        if error is not None:
            self.metrics.inc("allocation_errors_total", resource=resource_name)
            log.warning("refused Allocate of %s IDs %s: %s", resource_name, device_ids, error)
            return
        self.metrics.inc("allocations_total", resource=resource_name)
        log.info("allocated %s IDs %s: %s", resource_name, device_ids, " ".join(paths))

    def samples(self) -> list[Sample]:
        states = {"registered": 0, "pending": 0, "unhealthy": 0}
        health = {"Healthy": 0, "Unhealthy": 0}
        messages = self._messages_of_withdrawn
        for running in self.running.values():
            plugin = running.plugin
            registration = self.registrar.registrations.get(plugin.resource_name)
            if running.vanished_since is not None:
                states["unhealthy"] += 1
            elif registration is not None and registration.registered:
                states["registered"] += 1
            else:
                states["pending"] += 1
            if plugin.resource.kind == KIND_POOL:
                for _, h in plugin.listing():
                    health[h] += 1
            else:
                health["Healthy" if plugin.healthy else "Unhealthy"] += plugin.resource.count
            messages += plugin.messages_sent
        out: list[Sample] = [("resources", (("state", s),), float(v)) for s, v in states.items()]
        out += [("devices", (("health", h),), float(v)) for h, v in health.items()]
        out.append(("listandwatch_messages_total", (), float(messages)))
        return out
