"""Shared fixtures: a temporary node (dev dir, plugin dir, config) and the daemon as a process.

Tests wait for conditions, never for a fixed time, and never assert how long something took:
CI runs on a loaded 2-core VM today and may run on a Raspberry Pi tomorrow. ``DEADLINE`` is how
long a condition may take before the test fails; it is generous on purpose, since a passing
test never waits for it. Latency targets live in bench/run.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEADLINE = 30.0  # seconds one awaited condition may take before the test fails
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: mknod of device nodes")


def mkdev(path: Path, kind: str = "c", major: int = 1, minor: int = 3) -> Path:
    """Make a real device node (root only) at ``path``, creating parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o660
    os.mknod(path, mode, os.makedev(major, minor))
    return path


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A fresh directory that an unprivileged user can reach (pytest's tmp_path sits under a
    0700 directory), for tests that drop privileges; removed afterwards with everything in it,
    including the 0-mode directories such tests make."""
    import shutil
    import tempfile

    # /tmp, or SDM_TEST_REACHABLE_DIR (tests/test_hygiene.py counts what is left there)
    root = Path(tempfile.mkdtemp(prefix="sdm-perm-", dir=os.environ.get("SDM_TEST_REACHABLE_DIR", "/tmp")))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)  # as root, 0-mode directories inside are no obstacle


@dataclass
class Node:
    root: Path
    dev: Path
    plugins: Path
    config: Path
    procs: list[DaemonProcess] = field(default_factory=list)

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def start(self, *extra: str, config: bool = True, env: dict[str, str] | None = None,
              args: list[str] | None = None, prelude: str | None = None) -> DaemonProcess:
        """Run the daemon; ``prelude`` is Python code run in its process before the CLI."""
        argv = args if args is not None else [
            "serve", "--dev-dir", str(self.dev), "--plugin-dir", str(self.plugins),
            "--log-level", "debug",
        ]
        if config and args is None:
            argv += ["--config", str(self.config)]
        proc = DaemonProcess.spawn([*argv, *extra], self.root / f"daemon{len(self.procs)}.log",
                                   env, prelude)
        self.procs.append(proc)
        return proc


class DaemonProcess:
    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    @classmethod
    def spawn(cls, argv: list[str], log_path: Path, env: dict[str, str] | None,
              prelude: str | None = None) -> DaemonProcess:
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = ["-m", "smarter_device_manager"]
        if prelude is not None:
            command = ["-c", f"{prelude}\nimport sys\nfrom smarter_device_manager.cli import main\n"
                       "sys.exit(main(sys.argv[1:]))"]
        popen = subprocess.Popen([sys.executable, *command, *argv],
                                 stdout=log, stderr=subprocess.STDOUT, env=full_env)
        return cls(popen, log_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged within {timeout}s; log:\n{self.log}")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = DEADLINE) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    dev = tmp_path / "dev"
    plugins = tmp_path / "plugins"
    dev.mkdir()
    plugins.mkdir()
    n = Node(tmp_path, dev, plugins, tmp_path / "config" / "conf.yaml")
    n.config.parent.mkdir()
    yield n
    for proc in n.procs:
        proc.stop()
