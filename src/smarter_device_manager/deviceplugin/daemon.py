"""The daemon: one asyncio loop wiring watcher -> worker -> reconcile.

Events only set flags and wake the worker; the worker waits for a short quiet
period (so a burst of udev events becomes one rescan), then reloads the config
if it changed, serves again on sockets the kubelet deleted, rescans the dev
dir and reconciles. Every change reaches the kubelet as one ListAndWatch
message per resource that changed, not one per event.

A flag is only dropped once its work is done. If the work fails (an I/O error,
a dev dir that cannot be read, a socket that cannot be served, a bug), what was
not done stays asked for and is retried with backoff, without waiting for
another event, which on an idle node may never come; ``/readyz`` and the
``rescan_failures_total``/``rescan_failing`` metrics show it meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smarter_device_manager import __version__
from smarter_device_manager.config import reread
from smarter_device_manager.deviceplugin.pinstore import PinStore
from smarter_device_manager.deviceplugin.plugin import Paths
from smarter_device_manager.deviceplugin.reconcile import Reconciler
from smarter_device_manager.deviceplugin.registrar import Registrar, Registration
from smarter_device_manager.discovery import discover
from smarter_device_manager.http import HttpServer
from smarter_device_manager.metrics import Metrics, Sample
from smarter_device_manager.rules import Config, ConfigError
from smarter_device_manager.watch import Watcher

if TYPE_CHECKING:
    from smarter_device_manager.deviceplugin.cdisync import CdiKeeper, CdiSettings

log = logging.getLogger(__name__)

QUIET = 0.02  # a burst is over when nothing happened for this long...
MAX_DELAY = 0.25  # ...or when it has lasted this long, whichever comes first
RETRY_FIRST = 0.5  # after a failed attempt to apply changes, retry after this long,
RETRY_MAX = 30.0  # doubling up to this

# Why the dev dir is walked, for rescans_total{reason}: one count per walk. When causes
# coincide within one settle window, the walk is counted under the first of them here.
REASONS = ("start", "overflow", "sighup", "config", "retry", "grace", "hotplug")


def main_reason(reasons: set[str]) -> str:
    return next(r for r in REASONS if r in reasons)


class RescanFailed(Exception):
    """A walk that cannot stand for the node (the dev dir itself could not be read)."""


STATE_SUBDIR = "smarter-device-manager"  # a directory: the kubelet's start-up cleanup keeps it


@dataclass(frozen=True)
class Settings:
    config_path: str | None  # None: the embedded default
    config_watch_dir: str | None
    dev_dir: str
    host_dev_dir: str
    plugin_dir: str
    prefix: str
    removal_grace: float
    sys_dir: str = "/sys"
    pass_device_specs: bool = False
    cdi: CdiSettings | None = None  # --cdi on
    http_host: str | None = None
    http_port: int = 0
    state_dir: str | None = None  # None: <plugin_dir>/smarter-device-manager (see pinstore)

    @property
    def state(self) -> str:
        return self.state_dir or os.path.join(self.plugin_dir, STATE_SUBDIR)


class Daemon:
    def __init__(self, settings: Settings, config: Config) -> None:
        self.settings = settings
        self.config = config
        self.config_error: ConfigError | None = None
        self._last_config_data = config.text.encode("utf-8")
        self.metrics = Metrics()
        self.metrics.collectors.append(self._samples)
        self.registrar = Registrar(settings.plugin_dir, self._registered)
        self.cdi: CdiKeeper | None = None
        if settings.cdi is not None:
            from smarter_device_manager.deviceplugin.cdisync import CdiKeeper

            self.cdi = CdiKeeper(settings.cdi)
        paths = Paths(settings.dev_dir, settings.host_dev_dir, self.cdi)
        self.pins = PinStore(settings.state, settings.removal_grace)
        self.reconciler = Reconciler(
            settings.prefix, paths, settings.plugin_dir,
            self.registrar, self.metrics, settings.removal_grace, self.pins,
        )
        self.http: HttpServer | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_event = 0.0
        self._rescan_reasons: set[str] = set()  # why the dev dir must be walked; empty: it need not
        self._config_dirty = False
        self._cdi_dirty = False
        self._plugin_dirty = False
        self._kubelet_restarted = False
        self._reregister = False
        self._problems: frozenset[str] = frozenset()
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: Watcher | None = None
        self._failures = 0  # failed attempts to apply changes in a row
        self._failure: str | None = None  # what the last one failed on
        self._retry: asyncio.TimerHandle | None = None

    # --- Sink: called by the watcher and signal handlers; only flags and a wake-up --------
    def _poke(self) -> None:
        self._last_event = asyncio.get_running_loop().time()
        self._wake.set()

    def dev_changed(self) -> None:
        """An inotify event under the dev dir (and only that: see _removal_due)."""
        self.metrics.inc("hotplug_events_total")
        self._rescan_reasons.add("hotplug")
        self._poke()

    def _removal_due(self) -> None:
        """A vanished device's removal grace is over: the walk withdraws it."""
        self._rescan_reasons.add("grace")
        self._poke()

    def config_changed(self) -> None:
        self._config_dirty = True
        self._poke()

    def cdi_changed(self) -> None:
        """Our CDI spec file (or its directory) was touched: check it is still ours."""
        self._cdi_dirty = True
        self._poke()

    def kubelet_started(self) -> None:
        log.info("kubelet.sock was created: the kubelet (re)started; registering everything again")
        self.metrics.inc("kubelet_restarts_total")
        self.registrar.kubelet_started()
        self._plugin_dirty = self._kubelet_restarted = True
        self._poke()

    def kubelet_stopped(self) -> None:
        log.info("kubelet.sock is gone: waiting for the kubelet to come back")
        self.registrar.kubelet_stopped()

    def socket_deleted(self, name: str) -> None:
        if self.reconciler.serves(name):
            self._plugin_dirty = True
            self._poke()

    def overflow(self) -> None:
        self._rescan_reasons.add("overflow")
        self._config_dirty = self._plugin_dirty = True
        self._poke()

    def hangup(self) -> None:
        log.info("SIGHUP: rescanning and registering every resource again")
        self._rescan_reasons.add("sighup")
        self._config_dirty = self._reregister = True
        self._poke()

    # --- the loop ---------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        s = self.settings
        os.makedirs(s.plugin_dir, exist_ok=True)
        self._watcher = Watcher(self, s.dev_dir, s.plugin_dir, s.config_watch_dir,
                                self.cdi.path if self.cdi is not None else None)
        if s.http_host is not None:
            self.http = HttpServer({"/healthz": self._healthz, "/readyz": self._readyz,
                                    "/metrics": self._metrics})
            await self.http.start(s.http_host, s.http_port)
            log.info("HTTP listener on %s:%d (/healthz /readyz /metrics)", s.http_host or "*",
                     self.http.port)
        log.info("smarter-device-manager %s: config %s (%d rules), dev dir %s, plugin dir %s",
                 __version__, self.config.source, len(self.config.rules), s.dev_dir, s.plugin_dir)
        for warning in self.config.warnings:
            log.warning("config: %s", warning)
        if not self.registrar.kubelet_up.is_set():
            log.info("no kubelet yet (%s missing); serving and waiting for it",
                     self.registrar.kubelet_socket)
        self.pins.load(loop.time())
        self._rescan_reasons.add("start")
        await self._attempt()
        worker = asyncio.create_task(self._work(), name="worker")
        await self._stop.wait()
        log.info("stopping: removing our sockets")
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await self._shutdown()
        log.info("stopped")
        return 0

    async def _shutdown(self) -> None:
        for timer in (self._timer, self._retry):
            if timer is not None:
                timer.cancel()
        if self._watcher is not None:
            self._watcher.close()
        await self.registrar.close()
        await self.reconciler.stop_all()
        if self.http is not None:
            await self.http.stop()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            first = loop.time()
            while True:  # settle: let the burst finish, but not for ever
                now = loop.time()
                quiet_left = self._last_event + QUIET - now
                if quiet_left <= 0 or now - first >= MAX_DELAY:
                    break
                await asyncio.sleep(min(quiet_left, first + MAX_DELAY - now))
            self._wake.clear()
            await self._attempt()

    async def _attempt(self) -> None:
        """Apply what changed; if any of it failed, keep it and retry with backoff."""
        failure: str | None
        try:
            await self._settle()
        except Exception as exc:  # neither the change nor the loop may be lost to it
            failure = str(exc) if isinstance(exc, RescanFailed) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (RescanFailed, OSError)) and failure != self._failure:
                log.exception("internal error while applying changes")
        else:
            failure = self._not_served()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if failure is None:
            if self._failures:
                log.info("changes applied after %d failed attempt(s)", self._failures)
            self._failures, self._failure = 0, None
            return
        self._failures += 1
        self._failure = failure
        self.metrics.inc("rescan_failures_total")
        delay = min(RETRY_FIRST * 2 ** (self._failures - 1), RETRY_MAX)
        self._retry = asyncio.get_running_loop().call_later(delay, self._poke)
        log.warning("changes not applied: %s; retrying in %.1fs (attempt %d)", failure, delay,
                    self._failures)

    def _not_served(self) -> str | None:
        """What could not be served; asks for the work that serves it again."""
        errors = self.reconciler.start_errors
        if not errors:
            return None
        # A resource that never started is started by a rescan; a lost socket by a resync.
        self._plugin_dirty = True
        self._rescan_reasons.add("retry")
        name, error = min(errors.items())
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{name}{more}: {error}"

    async def _settle(self) -> None:
        config_dirty, self._config_dirty = self._config_dirty, False
        plugin_dirty, self._plugin_dirty = self._plugin_dirty, False
        restarted, self._kubelet_restarted = self._kubelet_restarted, False
        reregister, self._reregister = self._reregister, False
        reasons, self._rescan_reasons = self._rescan_reasons, set()
        cdi_dirty, self._cdi_dirty = self._cdi_dirty, False
        try:
            if cdi_dirty and self.cdi is not None:
                self.cdi.repair()
            if config_dirty:
                if self._reload_config():
                    reasons.add("config")
                config_dirty = False
            if plugin_dirty:
                await self.reconciler.resync_sockets(restarted)
                plugin_dirty = restarted = False
            if reasons:
                await self._rescan(main_reason(reasons))
                reasons = set()
            if reregister:
                self.reconciler.reregister_all()
                reregister = False
        finally:
            # What was not done is still to do (events meanwhile may have asked for more).
            self._config_dirty |= config_dirty
            self._plugin_dirty |= plugin_dirty
            self._kubelet_restarted |= restarted
            self._reregister |= reregister
            if reasons:
                self._rescan_reasons |= reasons | {"retry"}

    def _reload_config(self) -> bool:
        """Read the config again (config.reread); True if a new valid one was taken."""
        found = reread(self.settings.config_path, self._last_config_data)
        if found is None:
            return False
        path, self._last_config_data, config = found
        if isinstance(config, ConfigError):
            self.config_error = config
            self.metrics.inc("config_reloads_total", result="rejected")
            log.error("config %s rejected; still serving the last good config (%s):\n  %s",
                      path, self.config.source, "\n  ".join(config.problems))
            return False
        self.config, self.config_error = config, None
        self.metrics.inc("config_reloads_total", result="applied")
        log.info("config %s reloaded: %d rules", path, len(config.rules))
        for warning in config.warnings:
            log.warning("config: %s", warning)
        return True

    async def _rescan(self, reason: str) -> None:
        s = self.settings
        self.metrics.inc("rescans_total", reason=reason)
        inventory = discover(s.dev_dir, self.config, s.prefix, s.sys_dir, s.pass_device_specs)
        if "" not in inventory.directories:
            # The dev dir itself could not be read: a failed walk, not an empty node (taking
            # it would withdraw every resource).
            unreadable = [p for p in inventory.problems if p.startswith("cannot read /dev/:")]
            raise RescanFailed(f"{unreadable[0] if unreadable else 'cannot read /dev/'} "
                               f"(dev dir {s.dev_dir})")
        if self._watcher is not None:
            self._watcher.sync_dev_dirs(inventory.directories)
        problems = frozenset(inventory.problems)
        if self.cdi is not None:
            # Before the kubelet hears of any change: an Allocate must never name a device
            # the runtime cannot find in the spec.
            self.cdi.sync(inventory)
            problems |= frozenset(self.cdi.problems)
        for problem in sorted(problems - self._problems):
            log.warning("%s", problem)
        self._problems = problems
        loop = asyncio.get_running_loop()
        await self.reconciler.apply(inventory, self.config, loop.time())
        self._schedule_removal()

    def _schedule_removal(self) -> None:
        due = self.reconciler.next_removal()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(due + 0.001, self._removal_due)

    # --- read-only views --------------------------------------------------------------
    def _registered(self, registration: Registration, ok: bool) -> None:
        self.metrics.inc("registrations_total", result="success" if ok else "failure")

    def _samples(self) -> list[Sample]:
        return [
            ("build_info", (("version", __version__),), 1.0),
            ("config_valid", (), 0.0 if self.config_error else 1.0),
            ("rescan_failing", (), 0.0 if self._failure is None else 1.0),
            *self._cdi_samples(),
        ]

    def _cdi_samples(self) -> list[Sample]:
        if self.cdi is None:
            return [("cdi_enabled", (("spec", ""),), 0.0)]
        return [("cdi_enabled", (("spec", self.cdi.path),), 0.0 if self.cdi.error else 1.0),
                ("cdi_spec_writes_total", (), float(self.cdi.writes))]

    def _healthz(self) -> tuple[int, str, str]:
        return 200, "text/plain", "ok\n"

    def _readyz(self) -> tuple[int, str, str]:
        reasons = []
        if self.config_error is not None:
            reasons.append(f"config rejected: {'; '.join(self.config_error.problems)}")
        if not self.registrar.kubelet_up.is_set():
            reasons.append(f"kubelet not running ({self.registrar.kubelet_socket} missing)")
        for name in self.registrar.pending():
            error = self.registrar.registrations[name].last_error
            reasons.append(f"{name} not registered yet" + (f": {error}" if error else ""))
        reasons += [f"{n}: {e}" for n, e in sorted(self.reconciler.start_errors.items())]
        if self.cdi is not None and self.cdi.error is not None:
            reasons.append(f"CDI not in use: {self.cdi.error}")
        if self._failure is not None:
            due = self._retry.when() - asyncio.get_running_loop().time() if self._retry else 0.0
            reasons.append(f"changes not applied ({self._failures} failed attempt(s), retrying "
                           f"in {max(due, 0.0):.1f}s): {self._failure}")
        if reasons:
            return 503, "text/plain", "not ready:\n" + "".join(f"- {r}\n" for r in reasons)
        return 200, "text/plain", f"ready: {len(self.reconciler.running)} resources registered\n"

    def _metrics(self) -> tuple[int, str, str]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

