"""The daemon in-process: a change whose work fails is kept and retried with backoff,
without waiting for another event, and the failure shows in /readyz and /metrics; a
config reload reads the file once."""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import mkdev, needs_root

from smarter_device_manager.config import load_config, parse_config
from smarter_device_manager.deviceplugin import daemon as daemon_module
from smarter_device_manager.deviceplugin.daemon import Daemon, Settings
from smarter_device_manager.discovery import Inventory
from smarter_device_manager.discovery import discover as real_discover

TTY = "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 2\n"


def settings(tmp_path: Path) -> Settings:
    for name in ("dev", "plugins"):
        (tmp_path / name).mkdir(exist_ok=True)
    dev = str(tmp_path / "dev")
    return Settings(config_path=None, config_watch_dir=None, dev_dir=dev, host_dev_dir=dev,
                    plugin_dir=str(tmp_path / "plugins"), prefix="smarter-devices",
                    removal_grace=300)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.01)


def sample(daemon: Daemon, series: str) -> float:
    for line in daemon.metrics.render().splitlines():
        if line.startswith(f"smarter_device_manager_{series} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


@needs_root
def test_a_failed_rescan_keeps_the_change_and_retries_without_another_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = False
    def discover(*args: Any) -> Inventory:
        if broken:
            raise OSError(errno.EIO, "Input/output error")
        return real_discover(*args)

    monkeypatch.setattr(daemon_module, "discover", discover)

    async def scenario() -> None:
        nonlocal broken
        daemon = Daemon(settings(tmp_path), parse_config(TTY, "c"))
        running = asyncio.create_task(daemon.run())
        await until(lambda: sample(daemon, 'rescans_total{reason="start"}') == 1, "start")
        broken = True
        mkdev(tmp_path / "dev" / "ttyUSB0", major=188)  # the one and only event
        await until(lambda: sample(daemon, "rescan_failures_total") >= 1, "a failed attempt")
        status, _, body = daemon._readyz()
        assert status == 503
        assert "changes not applied" in body and "OSError: [Errno 5] Input/output error" in body
        assert sample(daemon, "rescan_failing") == 1
        assert "ttyUSB0" not in daemon.reconciler.running

        broken = False  # mended; no event tells the daemon
        await until(lambda: "ttyUSB0" in daemon.reconciler.running, "the retry")
        assert sample(daemon, "rescan_failing") == 0
        assert sample(daemon, 'rescans_total{reason="retry"}') >= 1
        assert "changes not applied" not in daemon._readyz()[2]
        daemon._stop.set()
        assert await running == 0

    run(scenario())


@needs_root
def test_an_unreadable_dev_dir_is_a_failed_rescan_not_an_empty_node(tmp_path: Path) -> None:
    mkdev(tmp_path / "dev" / "ttyUSB0", major=188)

    async def scenario() -> None:
        daemon = Daemon(settings(tmp_path), parse_config(TTY, "c"))
        running = asyncio.create_task(daemon.run())
        await until(lambda: "ttyUSB0" in daemon.reconciler.running, "start")
        plugin = daemon.reconciler.running["ttyUSB0"].plugin
        os.rename(tmp_path / "dev", tmp_path / "away")  # the watch follows it: an event
        await until(lambda: sample(daemon, "rescan_failures_total") >= 1, "a failed attempt")
        assert "cannot read /dev/: No such file or directory" in daemon._readyz()[2]
        assert plugin.healthy, "an unreadable dev dir does not make its devices vanish"
        assert daemon.reconciler.running["ttyUSB0"].vanished_since is None
        os.rename(tmp_path / "away", tmp_path / "dev")
        await until(lambda: sample(daemon, "rescan_failing") == 0, "recovery")
        assert plugin.healthy and daemon.reconciler.running["ttyUSB0"].plugin is plugin
        daemon._stop.set()
        assert await running == 0

    run(scenario())


def test_a_config_reload_reads_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What is compared with the last config and what is parsed must be the same read."""
    path = tmp_path / "conf.yaml"
    path.write_text(TTY)
    daemon = Daemon(replace(settings(tmp_path), config_path=str(path)), load_config(str(path)))
    path.write_text(TTY + "- devicematch: ^fuse$\n  nummaxdevices: 3\n")
    opened: list[object] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert daemon._reload_config() is True
    assert len(opened) == 1
    assert [r.pattern for r in daemon.config.rules] == ["^ttyUSB[0-9]+$", "^fuse$"]
    assert daemon._reload_config() is False, "unchanged"
    assert len(opened) == 2


@needs_root
def test_a_resource_that_cannot_be_served_and_goes_away_stops_the_retries(tmp_path: Path) -> None:
    mkdev(tmp_path / "dev" / "ttyUSB0", major=188)
    setup = settings(tmp_path)
    (tmp_path / "plugins" / "smarter-ttyUSB0.sock").mkdir()  # a stranger holds its socket name

    async def scenario() -> None:
        daemon = Daemon(setup, parse_config(TTY, "c"))
        running = asyncio.create_task(daemon.run())
        await until(lambda: sample(daemon, "rescan_failures_total") >= 1, "a failed attempt")
        assert "ttyUSB0: cannot serve on" in daemon._readyz()[2]
        (tmp_path / "dev" / "ttyUSB0").unlink()  # not wanted any more
        await until(lambda: sample(daemon, "rescan_failing") == 0, "no failure left")
        body = daemon._readyz()[2]  # still 503: there is no kubelet here
        assert "cannot serve" not in body and "changes not applied" not in body
        assert daemon.reconciler.start_errors == {}
        daemon._stop.set()
        assert await running == 0

    run(scenario())
