#!/usr/bin/env python3
"""Assemble the image's distroless root filesystem (run inside the Dockerfile's builder stage).

    /opt/venv/bin/python scripts/image-rootfs.py DEST

DEST receives only what the daemon can ever run, with every path as it is in the builder:

* the Python interpreter (``sys.executable``'s real file and the ``python3`` link to it), the
  shared libraries it and every copied extension module load (found with ``ldd``, symlink
  chains and the merged-/usr links kept), and nothing else of the system;
* of the standard library and of the venv's site-packages, the modules any import statement of
  the package can reach (``modulefinder``'s static closure from every module of
  ``smarter_device_manager``: lazy imports inside functions included), minus EXCLUDED below;
  plus the ``encodings`` the runs looked up and the few the interpreter may (BASE_CODECS), and
  the venv's ``*.dist-info`` (licences and versions for SBOM scanners);
* bytecode only for the modules the daemon really imports: every subcommand of the CLI
  (``cli.COMMANDS``; one without a run here fails the build) is run for real, with a hook that
  records ``sys.modules`` at exit: ``--version``, ``--help``, ``list``, ``check-config`` with a
  good and a bad file, ``cdi`` (print, write, remove), ``serve`` with its HTTP endpoints scraped,
  SIGHUP and SIGTERM, and ``dra`` against the API-server stand-in (tests/fake_apiserver.py) and a
  kubelet stand-in (registration, the slice published, a claim prepared and unprepared, SIGTERM).
  Those modules, and only those, get an unchecked-hash ``.pyc`` (valid whatever the sources'
  mtimes become; Python does not even stat the source). A module that is imported but not in
  the closure (or EXCLUDED) fails the build: that is how ``ssl`` for ``dra`` gets in;
* the Debian copyright files and dpkg status stanzas of the packages the files come from
  (``/usr/share/doc/<pkg>/copyright``, ``/var/lib/dpkg/status.d/<pkg>``, the layout distroless
  images use and SBOM scanners read), ``/etc/passwd`` and ``/etc/group`` with root and nobody,
  and an empty ``/tmp`` (the pods' termination-message file goes there).

It prints a summary (files and bytes per part) so the build log shows what went in.
"""

from __future__ import annotations

import json
import modulefinder
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = "smarter_device_manager"
CONSOLE_SCRIPT = "smarter-device-manager"

# Reachable by some import statement, never needed by the daemon, and large or pulling in
# shared libraries. Each is checked against the traced imports: excluding a module the daemon
# imports fails the build.
EXCLUDED = {
    # (Not ssl: DRA mode's API client needs it, and libssl/libcrypto with it. `serve` keeps it
    # out with sys.modules["ssl"] = None; the traced runs below would fail the build if a mode
    # imported anything listed here.)
    # Reached through pdb/doctest/help() paths of the standard library only.
    "pdb", "doctest", "pydoc", "pydoc_data", "unittest", "tkinter", "turtle", "idlelib",
    "_pyrepl", "code", "codeop", "rlcompleter", "readline", "curses", "_curses",
    # Reached from concurrent.futures.process / asyncio's subprocess helpers' optional paths.
    "multiprocessing", "_multiprocessing", "_posixshmem",
    # Compression, archives, databases, mail, XML, the web: nothing in the daemon reads them.
    "bz2", "_bz2", "lzma", "_lzma", "zipfile", "tarfile", "zipimport", "gzip", "shutil_archives",
    "sqlite3", "_sqlite3", "dbm", "_dbm", "email", "mailbox", "xml", "xmlrpc", "_elementtree",
    "pyexpat", "http.client", "http.cookiejar", "urllib.request", "ftplib", "smtplib",
    "lib2to3", "ensurepip", "venv", "tomllib", "_decimal", "_pydecimal",
    "decimal", "fractions", "statistics", "uuid", "_uuid", "netrc", "getpass",
    # (not calendar: dra reads a taint's timeAdded with time.strptime, which imports it)
    "webbrowser", "mimetypes", "optparse", "pickle", "_pickle",
    "pickletools", "_compat_pickle", "copyreg_unused", "csv", "_csv", "sysconfig",
    "_aix_support", "_osx_support", "_android_support", "_apple_support", "_ios_support",
    # Other platforms' code and pure-Python fallbacks of the C modules this interpreter has:
    # reachable by an import statement under `if sys.platform == "win32"` or `except ImportError`.
    "asyncio.windows_events", "asyncio.windows_utils", "asyncio.proactor_events", "_pydatetime",
    "plistlib", "concurrent.futures.process", "_winapi", "winreg", "nt", "msvcrt",
    # modulefinder and friends of this script, test helpers.
    "modulefinder", "test", "_testcapi", "_testinternalcapi",
    # grpclib's optional parts the daemon does not use (protobuf codec, reflection, health,
    # its protoc plugin, certifi/ssl helpers).
    "google", "grpclib.plugin", "grpclib.reflection", "grpclib.health",
    "grpclib.utils_ssl", "certifi", "googleapis_common_protos",
}

# The codecs shipped besides those the traced runs looked up: the ones the interpreter and the
# standard streams may ask for before or outside any traced path (UTF-8 mode, the surrogateescape
# fallbacks, IDNA for a host name given to getaddrinfo). The image sets no locale and has none,
# so Python runs in UTF-8 mode and nothing asks for cp437 or koi8_r; the ~100 single-byte codecs
# (1.4 MB of source) stay out. A traced run that looked one up still gets it.
BASE_CODECS = {"__init__", "aliases", "utf_8", "utf_8_sig", "ascii", "latin_1", "idna", "punycode"}


def excluded(name: str) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in EXCLUDED for i in range(1, len(parts) + 1))


def package_modules(site: Path) -> list[Path]:
    return sorted((site / PACKAGE).rglob("*.py"))


def static_closure(site: Path, codecs: list[Path]) -> dict[str, Path]:
    """Module name -> file, for everything any import statement of the package or of the
    shipped codecs can reach (minus EXCLUDED). The codecs count: ``encodings.idna``, which
    ``ssl`` uses for every server name, imports ``stringprep`` and ``unicodedata``."""
    finder = modulefinder.ModuleFinder(path=sys.path, excludes=sorted(EXCLUDED))
    for path in package_modules(site):
        finder.run_script(str(path))
    for path in codecs:  # by name: they are a package's modules, with relative imports
        finder.import_hook("encodings" if path.stem == "__init__" else f"encodings.{path.stem}")
    found: dict[str, Path] = {}
    for name, module in finder.modules.items():
        file = getattr(module, "__file__", None)
        if file and not excluded(name):
            found[name] = Path(file)
    return found


def traced_imports(venv: Path, work: Path) -> set[str]:
    """The modules the daemon really imports, every subcommand of the CLI run for real.

    The subcommands come from the CLI itself (``cli.COMMANDS``): one without a run here fails
    the build, so a new mode cannot ship without its imports traced (2.1.0's first image left
    ``ssl`` out because ``dra`` was never run here)."""
    from smarter_device_manager.cli import COMMANDS

    script = venv / "bin" / CONSOLE_SCRIPT
    python = venv / "bin" / "python"
    dev = work / "dev"
    plugins = work / "plugins"
    (dev / "net").mkdir(parents=True)
    plugins.mkdir()
    # Regular files are enough for discovery to skip them with a warning; no mknod in builds.
    for name in ("ttyUSB0", "net/tun", "video0"):
        (dev / name).write_text("")
    good = work / "good.yaml"
    good.write_text("- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n")
    bad = work / "bad.yaml"
    bad.write_text("- devicematc: ^ttyUSB[0-9]*$\n  nummaxdevices: -1\n")
    # A real device node every build has: the builder's /dev/null (cdi needs one to describe).
    null = work / "null.yaml"
    null.write_text("- devicematch: ^null$\n  nummaxdevices: 2\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # The console script run as it is, with an atexit hook that appends the names of the
    # modules really loaded (sys.modules minus the None entries: the CLI puts ssl=None there)
    # to a file. The daemons exit through sys.exit() on SIGTERM, so the hook runs for them too.
    record = work / "modules.txt"
    hook = ("import atexit, runpy, sys\n"
            "def _dump():\n"
            f"    with open({str(record)!r}, 'a') as f:\n"
            "        f.write('\\n'.join(k for k, v in sys.modules.items() if v is not None) + '\\n')\n"
            "atexit.register(_dump)\n"
            f"sys.argv = [{str(script)!r}] + sys.argv[1:]\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    traced_python = [str(python), "-c", hook]
    cdi_dir = work / "cdi"
    cdi_dir.mkdir()
    runs: dict[str, list[list[str]]] = {
        "": [["--version"], ["--help"]],
        "list": [["list", "--dev-dir", str(dev)],
                 ["list", "--dev-dir", str(dev), "--output", "json", "--config", str(good)],
                 ["list", "--dev-dir", "/dev", "--config", str(null), "--cdi", "on"]],
        "check-config": [["check-config", str(good)], ["check-config", str(bad)]],
        "cdi": [["cdi", "--dev-dir", "/dev", "--config", str(null)],
                ["cdi", "--dev-dir", "/dev", "--config", str(null), "--cdi-dir", str(cdi_dir),
                 "--write"],
                ["cdi", "--dev-dir", "/dev", "--config", str(null), "--cdi-dir", str(cdi_dir),
                 "--remove"]],
        "serve": [["serve", "--help"]],
        "dra": [["dra", "--help"]],
        "dra-classes": [["dra-classes", "--help"]],
    }
    daemons: dict[str, Callable[[], None]] = {
        "serve": lambda: _trace_serve(traced_python, env, dev, plugins, good),
        "dra": lambda: _trace_dra(traced_python, env, work / "dra"),
        "dra-classes": lambda: _trace_dra_classes(traced_python, env, work / "dra-classes"),
    }
    untraced = [c for c in COMMANDS if c not in runs]
    if untraced:
        sys.exit(f"no traced run for the subcommand(s) {untraced} in scripts/image-rootfs.py: "
                 "add one, or the image may lack what they import")
    for command in ("", *COMMANDS):
        for args in runs[command]:
            proc = subprocess.run([*traced_python, *args], env=env,
                                  capture_output=True, text=True, timeout=300, check=False)
            if proc.returncode not in (0, 2):
                sys.exit(f"{args} exited {proc.returncode}:\n{proc.stderr}")
        if command in daemons:
            daemons[command]()
    names = set(record.read_text().split())
    # runpy and pkgutil: the hook's own. sitecustomize: Debian's (in /etc/python3.13), an
    # optional hook that site.py skips when absent; the image leaves it out.
    return names - {"runpy", "pkgutil", "sitecustomize", "usercustomize"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int, paths: list[str], deadline: float, proc: subprocess.Popen[str]) -> list[str]:
    """GET each path until answered (any status); returns those never answered."""
    pending = list(paths)
    while pending and time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{pending[0]}", timeout=5).read()
        except urllib.error.HTTPError:
            pass  # /readyz 503 without a kubelet, /nothing 404: answered is enough
        except OSError:
            time.sleep(0.2)
            continue
        pending.pop(0)
    return pending


def _trace_serve(traced_python: list[str], env: dict[str, str], dev: Path, plugins: Path,
                 good: Path) -> None:
    """``serve`` twice (text and JSON logs): HTTP endpoints scraped, SIGHUP, then SIGTERM."""
    port = _free_port()
    for log_format in ("text", "json"):
        serve = subprocess.Popen(
            [*traced_python, "serve", "--dev-dir", str(dev),
             "--plugin-dir", str(plugins), "--config", str(good), f"--log-format={log_format}",
             f"--http-address=127.0.0.1:{port}", "--log-level=debug"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pending = _scrape(port, ["/healthz", "/readyz", "/metrics", "/nothing"],
                          time.monotonic() + 120, serve)  # qemu is slow
        serve.send_signal(signal.SIGHUP)
        time.sleep(1)
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=120)
        if pending or serve.returncode != 0:
            sys.exit(f"serve did not answer {pending} or exited {serve.returncode}:\n{err}")


DRA_DRIVER = "smarter-devices.io"
DRA_NODE = "image-build"


def _trace_dra(traced_python: list[str], env: dict[str, str], work: Path) -> None:
    """``dra`` against the test suite's API-server stand-in (tests/fake_apiserver.py, in the
    build context for this) and a kubelet stand-in written here with the package's own messages
    (no protobuf in the builder): registration, the slice published, a claim prepared and
    unprepared, the HTTP endpoints, SIGHUP, SIGTERM. The device is the builder's /dev/null."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_apiserver import FakeApiServer

    work.mkdir()
    config = work.parent / "null.yaml"
    registry = work / "plugins_registry"
    port = _free_port()

    tls, ca = _tls(work)

    async def scenario() -> str:
        api = FakeApiServer()
        await api.start(tls=tls)
        kubeconfig = _kubeconfig(api, work, ca)
        api.add_node(DRA_NODE, "uid-node-image-build")  # the slices' owner (ownerReferences)
        (work / "cdi").mkdir()  # the host's CDI dir: the chart mounts it; dra never creates it
        api.add_claim("default", "build", "uid-build", [
            {"request": "dev", "driver": DRA_DRIVER, "pool": DRA_NODE, "device": "null"}])
        proc = subprocess.Popen(
            [*traced_python, "dra", "--dev-dir", "/dev", "--config", str(config),
             "--node-name", DRA_NODE, "--kubeconfig", kubeconfig,
             "--kubelet-plugins-dir", str(work / "plugins"),
             "--kubelet-registry-dir", str(registry), "--cdi-dir", str(work / "cdi"),
             "--state-dir", str(work / "state"), f"--http-address=127.0.0.1:{port}",
             "--log-level=debug", "--log-format=json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        step = "start"
        try:
            deadline = time.monotonic() + 120
            step = "registration socket"
            sock = await _until(lambda: next(iter(sorted(registry.glob("*.sock"))), None),
                                deadline, proc)
            step = "registration"
            endpoint = await _register(str(sock))
            step = "slice published"
            await _until(lambda: "null" in api.devices(DRA_NODE), deadline, proc)
            step = "claim prepared"
            await _prepare(endpoint)
            step = "HTTP endpoints"
            pending = await asyncio.to_thread(
                _scrape, port, ["/healthz", "/readyz", "/metrics", "/nothing"], deadline, proc)
            if pending:
                raise RuntimeError(f"not answered: {pending}")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1)
            step = "SIGTERM"
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"exit code {proc.returncode}")
            return ""
        except Exception as exc:  # reported with the daemon's log; the build fails
            proc.kill()
            _, err = proc.communicate(timeout=60)
            return f"dra: {step}: {exc!r}\n{err}"
        finally:
            await api.stop()

    problem = asyncio.run(scenario())
    if problem:
        sys.exit(problem)


def _trace_dra_classes(traced_python: list[str], env: dict[str, str], work: Path) -> None:
    """``dra-classes`` against the API-server stand-in over TLS: a node's slice with one device
    is there, the controller creates its DeviceClass, the HTTP endpoints answer, SIGTERM ends it."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_apiserver import FakeApiServer

    work.mkdir()
    port = _free_port()
    tls, ca = _tls(work)

    async def scenario() -> str:
        api = FakeApiServer()
        await api.start(tls=tls)
        kubeconfig = _kubeconfig(api, work, ca)
        api.put_slice({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                       "metadata": {"name": f"{DRA_NODE}-{DRA_DRIVER}-0"},
                       "spec": {"driver": DRA_DRIVER, "nodeName": DRA_NODE,
                                "pool": {"name": DRA_NODE, "generation": 1, "resourceSliceCount": 1},
                                "devices": [{"name": "null", "attributes": {
                                    "resource": {"string": "smarter-devices/null"}}}]}})
        proc = subprocess.Popen(
            [*traced_python, "dra-classes", "--kubeconfig", kubeconfig,
             f"--http-address=127.0.0.1:{port}", "--log-level=debug", "--log-format=json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        step = "start"
        try:
            deadline = time.monotonic() + 120
            step = "DeviceClass created"
            await _until(lambda: bool(api.classes), deadline, proc)
            step = "HTTP endpoints"
            pending = await asyncio.to_thread(
                _scrape, port, ["/healthz", "/readyz", "/metrics", "/nothing"], deadline, proc)
            if pending:
                raise RuntimeError(f"not answered: {pending}")
            step = "SIGTERM"
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"exit code {proc.returncode}")
            return ""
        except Exception as exc:  # reported with the controller's log; the build fails
            proc.kill()
            _, err = proc.communicate(timeout=60)
            return f"dra-classes: {step}: {exc!r}\n{err}"
        finally:
            await api.stop()

    problem = asyncio.run(scenario())
    if problem:
        sys.exit(problem)


def _kubeconfig(api: Any, work: Path, ca: str) -> str:
    """The stand-in's kubeconfig with its CA inline, as kubeadm writes it (TLS verified)."""
    kubeconfig = api.kubeconfig(str(work / "kubeconfig"))
    text = Path(kubeconfig).read_text()
    Path(kubeconfig).write_text(text.replace(
        f'server: "{api.url}"', f'server: "{api.url}", certificate-authority-data: {ca}'))
    return str(kubeconfig)


def _tls(work: Path) -> tuple[Any, str]:
    """A server context for 127.0.0.1 and its certificate (base64), made with the openssl
    command (the builder installs it): ``dra`` talks TLS to every real API server, so the
    traced run must too (2.1.0's first image shipped ``ssl`` without the ``idna`` codec that
    ``ssl`` needs for a server name: plain HTTP never asked for it)."""
    import base64
    import ssl

    if shutil.which("openssl") is None:
        sys.exit("the openssl command is needed to trace dra over TLS (apt-get install openssl)")
    key, cert = work / "apiserver.key", work / "apiserver.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context, base64.b64encode(cert.read_bytes()).decode()


async def _until(probe: Callable[[], Any], deadline: float, proc: subprocess.Popen[str]) -> Any:
    import asyncio

    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited {proc.returncode}")
        await asyncio.sleep(0.1)
    raise TimeoutError("deadline passed")


async def _register(sock: str) -> str:
    """The kubelet's plugin-watcher calls: GetInfo, then NotifyRegistrationStatus."""
    from grpclib.client import Channel, UnaryUnaryMethod

    from smarter_device_manager.api import dra as api

    channel = Channel(path=sock)
    try:
        base = f"/{api.REGISTRATION_SERVICE}/"
        info = await UnaryUnaryMethod(channel, base + "GetInfo", api.InfoRequest,
                                      api.PluginInfo)(api.InfoRequest(), timeout=30)
        if info.type != api.PLUGIN_TYPE or api.DRA_V1 not in info.supported_versions:
            raise RuntimeError(f"GetInfo answered {info!r}")
        await UnaryUnaryMethod(channel, base + "NotifyRegistrationStatus", api.RegistrationStatus,
                               api.RegistrationStatusResponse)(
            api.RegistrationStatus(plugin_registered=True, error=""), timeout=30)
        return str(info.endpoint)
    finally:
        channel.close()


async def _prepare(endpoint: str) -> None:
    """NodePrepareResources then NodeUnprepareResources of the claim on /dev/null."""
    from grpclib.client import Channel, UnaryUnaryMethod

    from smarter_device_manager.api import dra as api

    channel = Channel(path=endpoint)
    try:
        base = f"/{api.DRA_SERVICE}/"
        claim = api.Claim(namespace="default", name="build", uid="uid-build")
        prepared = await UnaryUnaryMethod(
            channel, base + "NodePrepareResources", api.NodePrepareResourcesRequest,
            api.NodePrepareResourcesResponse)(api.NodePrepareResourcesRequest(claims=[claim]),
                                              timeout=30)
        answer = prepared.claims.get("uid-build")
        if answer is None or answer.error or not answer.devices:
            raise RuntimeError(f"NodePrepareResources answered {prepared!r}")
        gone = await UnaryUnaryMethod(
            channel, base + "NodeUnprepareResources", api.NodeUnprepareResourcesRequest,
            api.NodeUnprepareResourcesResponse)(api.NodeUnprepareResourcesRequest(claims=[claim]),
                                                timeout=30)
        if gone.claims["uid-build"].error:
            raise RuntimeError(f"NodeUnprepareResources answered {gone!r}")
    finally:
        channel.close()


def add_path(dest: Path, path: str, seen: set[str]) -> None:
    """Copy ``path`` into ``dest`` at the same place, keeping every symlink on the way (the
    merged-/usr ``/lib`` link, ``libz.so.1`` -> ``libz.so.1.3.1``)."""
    path = os.path.normpath(path)
    if path in seen:
        return
    seen.add(path)
    parts = Path(path).parts
    for i in range(2, len(parts)):  # a symlinked parent directory (/lib -> usr/lib)
        prefix = os.path.join(*parts[:i])
        if os.path.islink(prefix):
            add_path(dest, prefix, seen)
            rest = os.path.join(*parts[i:])
            add_path(dest, os.path.join(os.path.realpath(prefix), rest), seen)
            return
    target = dest / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(path):
        link = os.readlink(path)
        if not target.is_symlink():
            target.symlink_to(link)
        add_path(dest, os.path.join(os.path.dirname(path), link), seen)
    elif os.path.isdir(path):
        target.mkdir(exist_ok=True)
    else:
        shutil.copy2(path, target)


def elf_deps(path: str) -> list[str]:
    proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # e.g. an extension built for another ABI (armhf .so on armel)
        sys.exit(f"ldd {path} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    out = proc.stdout
    deps = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            deps.append(match.group(1))
    return deps


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def owning_packages(paths: list[str]) -> set[str]:
    """Debian packages that ship these paths (``dpkg-query -S``; the merged-/usr aliases are
    tried too, since dpkg may know a file by its /lib path)."""
    pkgs: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        candidates = sorted({path, real, real[4:] if real.startswith("/usr/") else real})
        for candidate in candidates:
            proc = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True,
                                  check=False)
            for line in proc.stdout.splitlines():
                if line.startswith("diversion "):
                    continue
                owners = line.split(": /", 1)[0]
                pkgs.update(o.strip().split(":")[0] for o in owners.split(","))
    return pkgs


def compile_pyc(src: Path, runtime_path: Path) -> None:
    import importlib.util
    import py_compile

    py_compile.compile(str(src), cfile=importlib.util.cache_from_source(str(src)),
                       dfile=str(runtime_path), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    dest = Path(sys.argv[1])
    venv = Path(sys.prefix)
    site = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = stdlib / "lib-dynload"
    assert sys.prefix != sys.base_prefix, "run this with the venv's python"
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()

    with tempfile.TemporaryDirectory() as tmp:
        traced = traced_imports(venv, Path(tmp))
    codecs = [path for path in sorted((stdlib / "encodings").glob("*.py"))
              if path.stem in BASE_CODECS or f"encodings.{path.stem}" in traced]
    closure = static_closure(site, codecs)
    builtin = set(sys.builtin_module_names)
    missing = sorted(n for n in traced if n not in closure and n not in builtin
                     and not n.startswith("encodings") and n not in ("__main__",)
                     and getattr(sys.modules.get(n), "__file__", "x") is not None)
    # Frozen stdlib modules (os, site, codecs, ...) import from the frozen copy; their .py
    # files still ship (getpath looks for os.py), so a traced frozen module is fine as long as
    # it is in the closure; anything else the daemon imported must be there.
    missing = [n for n in missing if _spec_file(n) is not None]
    if missing:
        sys.exit(f"imported at run time but not in the static closure (or EXCLUDED): {missing}")

    # Python modules: the closure, plus encodings (looked up by name) and the entry script.
    files: dict[Path, bool] = {}  # source -> compile a pyc?
    for name, path in closure.items():
        files[path] = name in traced
        if path.name == "__init__.py":
            continue
        parent = name.rpartition(".")[0]
        while parent:  # a package's __init__ even when modulefinder listed only the child
            init = closure.get(parent)
            if init is not None:
                files.setdefault(init, parent in traced)
            parent = parent.rpartition(".")[0]
    for path in codecs:
        files.setdefault(path, f"encodings.{path.stem}" in traced or path.stem == "__init__")
    for landmark in ("os.py",):
        files.setdefault(stdlib / landmark, "os" in traced)

    for path, pyc in sorted(files.items()):
        real = str(path)
        add_path(dest, real, seen)
        if pyc and path.suffix == ".py":
            compile_pyc(dest / real.lstrip("/"), path)

    # The venv itself: interpreter links, pyvenv.cfg, the console script, dist-info.
    for item in ("pyvenv.cfg", "bin/python", "bin/python3", f"bin/{CONSOLE_SCRIPT}", "lib64"):
        if os.path.lexists(venv / item):
            add_path(dest, str(venv / item), seen)
    for info in sorted(site.glob("*.dist-info")):
        if info.name.split("-")[0].lower() in ("pip", "setuptools"):
            continue
        for f in sorted(info.rglob("*")):
            if f.is_file() and f.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                add_path(dest, str(f), seen)
    for f in sorted((site / PACKAGE).rglob("*")):  # default_config.yaml, py.typed, the .proto
        if f.is_file() and f.suffix not in (".py", ".pyc"):
            add_path(dest, str(f), seen)

    # Native code: the interpreter, extension modules, and their libraries.
    interpreter = os.path.realpath(sys.executable)
    add_path(dest, interpreter, seen)
    add_path(dest, str(Path(interpreter).parent / "python3"), seen)
    elves = [interpreter] + [str(p) for p in files if p.suffix == ".so"]
    elves += [str(p) for p in dest.rglob("*.so") if p.is_file() and is_elf(p)]
    libs: set[str] = set()
    for elf in list(elves):
        real = elf if not elf.startswith(str(dest)) else "/" + str(Path(elf).relative_to(dest))
        for dep in elf_deps(real):
            libs.add(dep)
            add_path(dest, dep, seen)

    # Debian metadata for what came from Debian packages.
    pkgs = owning_packages(sorted({interpreter, *libs, str(stdlib / "os.py"), str(dynload)}))
    status_d = dest / "var/lib/dpkg/status.d"
    status_d.mkdir(parents=True, exist_ok=True)
    for pkg in sorted(pkgs):
        status = subprocess.run(["dpkg-query", "-s", pkg], capture_output=True, text=True,
                                check=True).stdout
        (status_d / pkg).write_text(status)
        copyright_file = Path("/usr/share/doc") / pkg / "copyright"
        if copyright_file.exists():
            add_path(dest, str(copyright_file), seen)

    etc = dest / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (dest / "tmp").mkdir(exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    (dest / "root").mkdir(exist_ok=True)
    (dest / "root").chmod(0o700)

    summary: dict[str, object] = {"files, bytes": _summary(dest, stdlib, site)}
    summary["debian packages"] = sorted(pkgs)
    summary["python files shipped"] = len(files)
    summary["modules imported at run time (with .pyc)"] = sum(files.values())
    print(json.dumps(summary))


def _spec_file(name: str) -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    return spec.origin


def _summary(dest: Path, stdlib: Path, site: Path) -> dict[str, list[int]]:
    parts = {"stdlib": str(stdlib), "venv": str(site.parents[2]), "doc+dpkg": "/usr/share/doc"}
    out: dict[str, list[int]] = {k: [0, 0] for k in [*parts, "interpreter+libs", "all"]}
    for f in dest.rglob("*"):
        if not f.is_file() or f.is_symlink():
            continue
        runtime = "/" + str(f.relative_to(dest))
        size = f.stat().st_size
        key = next((k for k, p in parts.items() if runtime.startswith(p)), "interpreter+libs")
        if runtime.startswith("/var/lib/dpkg"):
            key = "doc+dpkg"
        for k in (key, "all"):
            out[k][0] += 1
            out[k][1] += size
    return out


if __name__ == "__main__":
    main()
