"""Benchmark of a fleet (issue 18, part 6): N DRA daemons, each its own node, against a real API
server, to measure what many nodes cost it.

Each daemon (``smarter-device-manager dra``) gets its own node name (``fleet-000`` …), dev dir
(three device nodes made with mknod, copies of /dev/null), rules file, kubelet plugin and
registry dirs, CDI and state dirs and HTTP port. No kubelet runs: this script plays the one part
of the kubelet the slices wait for, its plugin watcher's registration (``GetInfo``, then
``NotifyRegistrationStatus`` on each daemon's registration socket, with the package's own
messages). The slices' owner is a Node object of that name, which this script creates (labelled
``sdm-bench=fleet``, tainted ``sdm-bench/no-kubelet`` NoSchedule and NoExecute so that no pod
lands there; the node lifecycle controller marks them NotReady, which harms nothing) and deletes
at the end.

The daemons run under a ServiceAccount of their own (the chart's DRA RBAC: resourceslices, get on
nodes) with a token from the TokenRequest API, and a FlowSchema of their own on the priority
level a DaemonSet's ServiceAccount gets (``workload-low``), so that the API server's own metric
``apiserver_flowcontrol_dispatched_requests_total{flow_schema="sdm-fleet-bench"}`` counts exactly
the fleet's requests, whatever else the cluster does meanwhile. The driver is
``fleet.smarter-devices.io``, so nothing here touches another driver's slices.

Figures (the issue's targets where it names one):

* cold start: all N started at once -> every node's slice at the API server (this script's own
  watch, as admin) and every daemon ready (``/readyz``: registered, slices in sync, watch
  running): fleet of 100 <= 30 s;
* at rest: the fleet's requests per node per minute (target 0 beyond the watch), the watches it
  holds (``apiserver_longrunning_requests``), its CPU;
* memory per daemon: VmRSS (target <= 32 MiB);
* every slice of the driver deleted at once (one DELETE collection) -> all in sync again, the
  fleet's requests for it and their peak rate per second;
* with ``--restart-command`` (a shell command that restarts the API server and returns once it
  serves again): API-server restart -> all in sync again (<= 30 s for 100), the peak request rate
  (no herd: the daemons back off with jitter).

Needs root (mknod) and a cluster admin kubeconfig (``--kubeconfig`` or ``$KUBECONFIG``). Cleans
up after itself, also on Ctrl-C or SIGTERM: the daemons, the slices of the driver, the Node
objects, the ServiceAccount, its namespace, role, binding and FlowSchema, the temp dirs.

Run: ``sudo .venv/bin/python bench/fleet.py [--nodes 100 | --quick] [--restart-command CMD]``.
Not run by ``bench/run.py`` (it needs a real cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DAEMON_ENV, cpu_seconds, mknod, proc_status, report

from smarter_device_manager.dra.kube import KubeClient, KubeError, load_kubeconfig, path_of

DRIVER = "fleet.smarter-devices.io"
NAMESPACE = "fleet-bench"
ACCOUNT = "fleet-bench"
NAME = "sdm-fleet-bench"  # ClusterRole, ClusterRoleBinding, FlowSchema
LABEL = "sdm-bench=fleet"
DEVICES = ["ttyUSB0", "ttyUSB1", "gpiochip0"]
RULES = """\
- devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
- devicematch: ^gpiochip[0-9]+$
  nummaxdevices: 1
"""
SLICES = path_of("resource.k8s.io/v1", "resourceslices")
NODES = path_of("v1", "nodes")
DISPATCHED = f'apiserver_flowcontrol_dispatched_requests_total{{flow_schema="{NAME}",'
LONGRUNNING = "apiserver_longrunning_requests{"
POLL = 0.5


# --- the API objects this script creates (and deletes) ----------------------------------------
def node_object(name: str) -> dict[str, Any]:
    taint = {"key": "sdm-bench/no-kubelet", "value": "fleet"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"sdm-bench": "fleet"}},
            "spec": {"taints": [{**taint, "effect": "NoSchedule"}, {**taint, "effect": "NoExecute"}]}}


def setup_objects() -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object): the daemons' identity, its RBAC (the chart's DRA role) and the
    FlowSchema that gives its requests a counter of their own."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    return [
        (path_of("v1", "namespaces"),
         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        (path_of("v1", "serviceaccounts", namespace=NAMESPACE),
         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}}),
        (f"{rbac}/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME},
            "rules": [{"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
                       "verbs": ["get", "list", "watch", "create", "update", "delete"]},
                      {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
        (f"{rbac}/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}]}),
        ("/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas", {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": NAME},
            "spec": {"priorityLevelConfiguration": {"name": "workload-low"}, "matchingPrecedence": 1000,
                     "distinguisherMethod": {"type": "ByUser"},
                     "rules": [{"subjects": [{"kind": "ServiceAccount",
                                              "serviceAccount": {"namespace": NAMESPACE, "name": ACCOUNT}}],
                                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                   "clusterScope": True, "namespaces": ["*"]}],
                                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}}),
    ]


async def create(admin: KubeClient, collection: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(await admin.request("POST", collection, body))
    except KubeError as exc:
        if exc.status != 409:
            raise
        return dict(await admin.request("GET", f"{collection}/{body['metadata']['name']}"))


async def delete(admin: KubeClient, path: str) -> None:
    try:
        await admin.request("DELETE", path)
    except KubeError as exc:
        if not exc.not_found:
            raise


async def cleanup_api(admin: KubeClient) -> None:
    """Everything this script may have created, also by an earlier run that was killed."""
    await delete(admin, f"{SLICES}?fieldSelector={quote('spec.driver=' + DRIVER)}")
    await delete(admin, f"{NODES}?labelSelector={quote(LABEL)}")
    for collection, body in reversed(setup_objects()):
        if body["kind"] != "ServiceAccount":  # goes with its namespace
            await delete(admin, f"{collection}/{body['metadata']['name']}")


async def namespace_gone(admin: KubeClient) -> None:
    for _ in range(240):
        try:
            await admin.request("GET", path_of("v1", "namespaces", NAMESPACE))
        except KubeError as exc:
            if exc.not_found:
                return
            raise
        await asyncio.sleep(0.5)
    raise TimeoutError(f"namespace {NAMESPACE} is still there after 2 minutes")


async def raw_get(admin: KubeClient, path: str) -> str:
    """A non-JSON answer (``/metrics``), through the package's own client."""
    response = await asyncio.wait_for(admin._exchange("GET", path, None), 20)
    if response.status != 200:
        raise KubeError(response.status, "", response.body[:200].decode(errors="replace"), "get", path)
    return response.body.decode()


def fleet_kubeconfig(admin_path: str, token: str, path: Path) -> str:
    """The admin kubeconfig's cluster (server, CA) with the fleet's ServiceAccount token."""
    with open(admin_path) as source:
        config = yaml.safe_load(source)
    current = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fleet",
        "clusters": [{"name": "fleet", "cluster": cluster}],
        "users": [{"name": "fleet", "user": {"token": token}}],
        "contexts": [{"name": "fleet", "context": {"cluster": "fleet", "user": "fleet"}}]}))
    path.chmod(0o600)
    return str(path)


# --- the daemons ----------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    held = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    ports = [s.getsockname()[1] for s in held]
    for sock in held:
        sock.close()
    return ports


class Daemon:
    """One node's daemon: its dirs, its process, the registration this script plays."""

    def __init__(self, root: Path, index: int, port: int) -> None:
        self.name = f"fleet-{index:03d}"
        self.root = root / self.name
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.registered = False
        for device in DEVICES:
            mknod(self.root / "dev" / device)
        (self.root / "cdi").mkdir()
        (self.root / "rules.yaml").write_text(RULES)

    @property
    def registration_socket(self) -> Path:
        return self.root / "registry" / f"{DRIVER}-reg.sock"

    def spawn(self, kubeconfig: str) -> None:
        r = self.root
        argv = [sys.executable, "-m", "smarter_device_manager", "dra", "--node-name", self.name,
                "--driver-name", DRIVER, "--kubeconfig", kubeconfig, "--config", str(r / "rules.yaml"),
                "--dev-dir", str(r / "dev"), "--kubelet-plugins-dir", str(r / "plugins"),
                "--kubelet-registry-dir", str(r / "registry"), "--cdi-dir", str(r / "cdi"),
                "--state-dir", str(r / "state"), "--http-address", f"127.0.0.1:{self.port}",
                "--log-level", "warning"]
        with open(r / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=DAEMON_ENV)

    async def register(self, deadline: float) -> None:
        """The kubelet plugin watcher's part: wait for the socket, GetInfo, NotifyRegistrationStatus."""
        from grpclib.client import Channel, UnaryUnaryMethod

        from smarter_device_manager.api import dra as api

        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: the daemon exited ({self.proc.returncode}); see "
                                   f"{self.root}/daemon.log")
            if self.registration_socket.is_socket():
                channel = Channel(path=str(self.registration_socket))
                try:
                    base = f"/{api.REGISTRATION_SERVICE}/"
                    info = await UnaryUnaryMethod(channel, base + "GetInfo", api.InfoRequest,
                                                  api.PluginInfo)(api.InfoRequest(), timeout=30)
                    if info.name != DRIVER or api.DRA_V1 not in info.supported_versions:
                        raise RuntimeError(f"{self.name}: GetInfo answered {info!r}")
                    await UnaryUnaryMethod(channel, base + "NotifyRegistrationStatus", api.RegistrationStatus,
                                           api.RegistrationStatusResponse)(
                        api.RegistrationStatus(plugin_registered=True, error=""), timeout=30)
                    self.registered = True
                    return
                except (OSError, ConnectionError):
                    pass  # the socket is there but not served yet
                finally:
                    channel.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no registration socket {self.registration_socket}")
            await asyncio.sleep(0.2)

    async def ready(self) -> bool:
        """``/readyz`` says 200: registered, slices in sync, the watch on them running."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 2)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
            return line.split(b" ")[1:2] == [b"200"]
        except (OSError, asyncio.TimeoutError, ConnectionError):
            return False
        finally:
            writer.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def stop_all(daemons: list[Daemon]) -> None:
    for d in daemons:
        d.stop()
    end = time.monotonic() + 15
    for d in daemons:
        if d.proc is None:
            continue
        try:
            d.proc.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()


# --- what the API server holds and what it counts ---------------------------------------------
class SliceView:
    """The driver's slices as the API server holds them (a list, then a watch, as admin)."""

    def __init__(self, admin: KubeClient) -> None:
        self.admin = admin
        self.slices: dict[str, tuple[str, int, str]] = {}  # slice name -> (node, devices, uid)
        self.old: set[str] = set()  # uids that do not count (slices deleted since)

    def nodes_in_sync(self) -> set[str]:
        return {node for node, devices, uid in self.slices.values()
                if devices == len(DEVICES) and uid not in self.old}

    def _take(self, obj: dict[str, Any], gone: bool = False) -> None:
        name = str(obj["metadata"]["name"])
        if gone:
            self.slices.pop(name, None)
        else:
            spec = obj.get("spec") or {}
            self.slices[name] = (str(spec.get("nodeName", "")), len(spec.get("devices") or ()),
                                 str(obj["metadata"].get("uid", "")))

    async def run(self) -> None:
        selector = f"spec.driver={DRIVER}"
        while True:
            try:
                answer = await self.admin.request("GET", f"{SLICES}?fieldSelector={quote(selector)}")
                self.slices.clear()
                for item in answer.get("items") or []:
                    self._take(item)
                version = str(answer["metadata"]["resourceVersion"])
                async for event in self.admin.watch(SLICES, {"fieldSelector": selector,
                                                             "resourceVersion": version,
                                                             "timeoutSeconds": "600"}):
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._take(event["object"], event["type"] == "DELETED")
                    elif event.get("type") == "ERROR":
                        break
            except KubeError:
                pass
            await asyncio.sleep(POLL)


class Counter:
    """The fleet's requests as the API server counts them (its FlowSchema's dispatched
    requests), sampled every second; a counter that went down is an API server that restarted."""

    def __init__(self, admin: KubeClient) -> None:
        self.admin = admin
        self.total = 0.0  # since this script started, across restarts
        self.samples: list[tuple[float, float]] = []  # (monotonic time, total)
        self.watches = 0.0  # apiserver_longrunning_requests WATCH resourceslices (everybody's)
        self._last: float | None = None

    async def sample(self) -> None:
        try:
            text = await raw_get(self.admin, "/metrics")
        except (KubeError, OSError, ConnectionError, asyncio.TimeoutError):
            return
        value, watches = 0.0, 0.0
        for line in text.splitlines():
            if line.startswith(DISPATCHED):
                value += float(line.rsplit(" ", 1)[1])
            elif line.startswith(LONGRUNNING) and 'resource="resourceslices"' in line and \
                    'verb="WATCH"' in line:
                watches += float(line.rsplit(" ", 1)[1])
        if self._last is not None:
            self.total += value - self._last if value >= self._last else value
        self._last = value
        self.watches = watches
        self.samples.append((time.monotonic(), self.total))

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.sample()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    def since(self, t0: float) -> tuple[float, float]:
        """Requests since ``t0`` (from the last sample before it) and the peak rate per second
        between samples."""
        before = [s for s in self.samples if s[0] < t0]
        window = before[-1:] + [s for s in self.samples if s[0] >= t0]
        if len(window) < 2:
            return 0.0, 0.0
        peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(window) if b[0] > a[0])
        return window[-1][1] - window[0][1], peak


async def back_again(admin: KubeClient) -> tuple[float, float]:
    """When the API server stopped answering /readyz, and when it answered 200 again."""
    down = None
    while True:
        try:
            await raw_get(admin, "/readyz")
            if down is not None:
                return down, time.monotonic()
        except (KubeError, OSError, ConnectionError, asyncio.TimeoutError):
            if down is None:
                down = time.monotonic()
        await asyncio.sleep(0.25)


async def flowschema_in_force(kubeconfig: str, counter: Counter, node: str) -> None:
    """Requests as the fleet until its FlowSchema counts them (a new one takes a moment)."""
    probe = KubeClient(load_kubeconfig(kubeconfig))
    try:
        await counter.sample()
        start = counter.total
        for _ in range(120):
            await probe.request("GET", f"{NODES}/{node}")
            await counter.sample()
            if counter.total > start:
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the FlowSchema {NAME} does not count the fleet's requests")
    finally:
        await probe.close()


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(POLL)
    return time.monotonic()


class Fleet:
    def __init__(self, daemons: list[Daemon], view: SliceView) -> None:
        self.daemons = daemons
        self.view = view
        self.ready: set[str] = set()

    async def in_sync(self) -> bool:
        """Every node's slice at the API server, every daemon ready (only the not-ready asked)."""
        waiting = [d for d in self.daemons if d.name not in self.ready]
        answers = await asyncio.gather(*(d.ready() for d in waiting))
        self.ready |= {d.name for d, ok in zip(waiting, answers, strict=True) if ok}
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is not None:
                raise RuntimeError(f"{d.name}: the daemon exited ({d.proc.returncode}); see "
                                   f"{d.root}/daemon.log")
        return len(self.ready) == len(self.daemons) and \
            self.view.nodes_in_sync() >= {d.name for d in self.daemons}


# --- the scenario ---------------------------------------------------------------------------
async def fleet(args: argparse.Namespace, daemons: list[Daemon], root: Path) -> None:
    n = args.nodes
    cluster = load_kubeconfig(args.kubeconfig)
    admin = KubeClient(cluster, timeout=30)
    tasks: list[asyncio.Task[None]] = []
    try:
        await cleanup_api(admin)  # an earlier run killed before it could clean up
        await namespace_gone(admin)  # an earlier run's may still be terminating
        for collection, body in setup_objects():
            await create(admin, collection, body)
        token = await admin.request("POST", path_of("v1", "serviceaccounts", ACCOUNT, NAMESPACE) + "/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200}})
        kubeconfig = fleet_kubeconfig(args.kubeconfig, token["status"]["token"], root / "kubeconfig")
        for i, port in enumerate(free_ports(n)):
            daemons.append(Daemon(root, i, port))
        for d in daemons:
            await create(admin, NODES, node_object(d.name))
        server_rss = proc_status(args.apiserver_pid)["VmRSS"] if args.apiserver_pid else 0.0
        view, counter = SliceView(admin), Counter(admin)
        tasks += [asyncio.create_task(view.run()), asyncio.create_task(counter.run())]
        await flowschema_in_force(kubeconfig, counter, daemons[0].name)
        group = Fleet(daemons, view)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(f"fleet of {n} DRA daemons (3 devices each) against {cluster.url}; "
              f"{os.cpu_count()} CPUs, {memory:.0f} GiB")

        # 1. cold start
        t0 = time.monotonic()
        for d in daemons:
            d.spawn(kubeconfig)
        deadline = t0 + args.timeout
        await asyncio.gather(*(d.register(deadline) for d in daemons))
        registered = time.monotonic()
        done = await wait_until("all in sync after the cold start", group.in_sync, args.timeout)
        await asyncio.sleep(2)
        await counter.sample()
        requests, peak = counter.since(t0)
        report(f"cold start of {n} -> all registered", f"{registered - t0:.1f} s", "-")
        report(f"cold start of {n} -> all slices in sync", f"{done - t0:.1f} s",
               "<= 30 s (fleet of 100)")
        report("  fleet requests for it; per node; peak rate", f"{requests:.0f}; {requests / n:.1f}; "
               f"{peak:.0f}/s", "-")

        name = next(iter(view.slices))
        size = len(await raw_get(admin, f"{SLICES}/{name}"))
        report("  one slice (3 devices), as JSON", f"{size} bytes", "-")

        # 2. at rest
        await asyncio.sleep(5)  # the last writes' echoes
        await counter.sample()
        c0, r0 = counter.total, time.monotonic()
        cpu0 = sum(cpu_seconds(d.proc.pid) for d in daemons if d.proc is not None)
        await asyncio.sleep(args.rest)
        await counter.sample()
        minutes = (time.monotonic() - r0) / 60
        cpu = sum(cpu_seconds(d.proc.pid) for d in daemons if d.proc is not None) - cpu0
        per_node = (counter.total - c0) / n / minutes
        report(f"at rest ({args.rest:g} s): fleet requests per node per minute", f"{per_node:.3f}",
               "0 beyond the watch (a watch reopened every 5 min is 0.2)")
        report("  resourceslice watches open (all clients)", f"{counter.watches:.0f} (fleet {n})", "1 a node")
        report("  fleet CPU at rest, all daemons together", f"{100 * cpu / (minutes * 60):.2f} % of a CPU",
               "-")

        if args.apiserver_pid:
            grown = proc_status(args.apiserver_pid)["VmRSS"] - server_rss
            report("  API server VmRSS growth with the fleet (noisy)",
                   f"{grown:+.0f} MiB; {1024 * grown / n:+.0f} KiB a node", "-")

        # 3. memory
        rss = [proc_status(d.proc.pid)["VmRSS"] for d in daemons if d.proc is not None]
        hwm = [proc_status(d.proc.pid)["VmHWM"] for d in daemons if d.proc is not None]
        report("memory per daemon: VmRSS median / max", f"{statistics.median(rss):.1f} / {max(rss):.1f} MiB",
               "<= 32 MiB")
        report("  VmHWM max; all daemons together", f"{max(hwm):.1f} MiB; {sum(rss):.0f} MiB", "-")

        # 4. every slice of the driver deleted at once
        t0 = time.monotonic()
        view.old = {uid for _, _, uid in view.slices.values()}  # the new ones count
        await admin.request("DELETE", f"{SLICES}?fieldSelector={quote('spec.driver=' + DRIVER)}")
        group.ready.clear()
        done = await wait_until("all in sync after the slices were deleted", group.in_sync, args.timeout)
        await asyncio.sleep(2)
        await counter.sample()
        requests, peak = counter.since(t0)
        report(f"all {n} nodes' slices deleted at once -> all in sync", f"{done - t0:.1f} s", "-")
        report("  fleet requests for it; per node; peak rate", f"{requests:.0f}; {requests / n:.1f}; "
               f"{peak:.0f}/s", "no herd")

        # 5. API-server restart
        if not args.restart_command:
            report("API-server restart -> all in sync", "skipped (no --restart-command)",
                   "<= 30 s (fleet of 100)")
            return
        t0 = time.monotonic()
        serving = asyncio.create_task(back_again(admin))
        restart = await asyncio.create_subprocess_shell(args.restart_command, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.PIPE)
        _, err = await restart.communicate()
        if restart.returncode != 0:
            raise RuntimeError(f"--restart-command failed ({restart.returncode}): {err.decode()[-2000:]}")
        returned = time.monotonic()
        down, back = await asyncio.wait_for(serving, args.timeout)
        group.ready.clear()
        done = await wait_until("all in sync after the API-server restart", group.in_sync, args.timeout)
        await asyncio.sleep(2)
        await counter.sample()
        requests, peak = counter.since(back)
        report("API-server restart: down after; serving again after", f"{down - t0:.1f} s; {back - t0:.1f} s "
               f"(the command returned after {returned - t0:.1f} s)", "-")
        report(f"  API server serving -> all {n} in sync again", f"{done - back:.1f} s",
               "<= 30 s (fleet of 100)")
        report("  fleet requests since it serves; per node; peak rate",
               f"{requests:.0f}; {requests / n:.1f}; {peak:.0f}/s", "no herd")
        # The API server serves some requests before its /readyz says 200.
        requests, peak = counter.since(t0)
        report("  fleet requests since the stop; per node; peak rate",
               f"{requests:.0f}; {requests / n:.1f}; {peak:.0f}/s", "no herd")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_all(daemons)
        try:
            await cleanup_api(admin)
        except KubeError as exc:
            print(f"cleanup failed ({exc}); delete by hand: the Node objects -l {LABEL}, the "
                  f"ResourceSlices of driver {DRIVER}, namespace {NAMESPACE}, ClusterRole, "
                  f"ClusterRoleBinding and FlowSchema {NAME}", file=sys.stderr)
        await admin.close()


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100, help="how many daemons (nodes), default 100")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 nodes, 20 s at rest")
    parser.add_argument("--rest", type=float, default=60.0, help="seconds at rest to count requests (60)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up a step after this (300 s)")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="a cluster admin's kubeconfig (default $KUBECONFIG)")
    parser.add_argument("--restart-command", default="",
                        help="a shell command that restarts the API server and returns once it serves "
                        "again; without it that step is skipped")
    parser.add_argument("--apiserver-pid", type=int, default=0,
                        help="the API server's process (on this machine), to report its memory growth")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (the daemons' logs)")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.rest = 10, min(args.rest, 20.0)
    if not args.kubeconfig:
        parser.error("no kubeconfig: --kubeconfig or $KUBECONFIG")
    if os.geteuid() != 0:
        parser.error("needs root (mknod)")
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    root = Path(tempfile.mkdtemp(prefix="sdm-fleet-"))
    daemons: list[Daemon] = []
    try:
        asyncio.run(fleet(args, daemons, root))
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        stop_all(daemons)  # also if the loop itself was interrupted before its own cleanup
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.restart_command:
        print(f"(API server restarted with: {shlex.quote(args.restart_command)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
