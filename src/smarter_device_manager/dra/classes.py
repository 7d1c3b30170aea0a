"""The dra-classes controller: one DeviceClass per extended resource name, so pods written for
device-plugin mode (``resources.limits: {smarter-devices/ttyUSB0: 1}``) run on DRA nodes unchanged.

How Kubernetes serves such a pod (DRAExtendedResource, beta and on in 1.36; read from the
scheduler's ``dynamicresources`` plugin and the kubelet's DRA manager): the scheduler looks the
resource name up among the DeviceClasses' ``spec.extendedResourceName``; on a node whose
allocatable does not have the resource (no device plugin serves it there) it makes one
ResourceClaim for the pod, with one request per container, ``exactly: {deviceClassName: <the
class>, count: <the quantity>}`` and no capacity request, allocates it like any claim and records
it in ``pod.status.extendedResourceClaimStatus``; the kubelet prepares that claim through our
driver and gives each container the CDI devices of its requests. So the class decides everything:
it must select exactly the devices that device-plugin mode advertised under that name.

Each device the node daemon publishes carries the attribute ``resource`` (the name device-plugin
mode gives it, ``smarter-devices/ttyUSB0``; pool members all carry the pool's name). This
controller watches the driver's ResourceSlices on every node, collects those names, and keeps one
class per name::

    metadata.name: <driver>-<resource name as a DNS label>   (smarter-devices.io-ttyusb0)
    spec.extendedResourceName: smarter-devices/ttyUSB0
    spec.selectors: device.driver == "<driver>" &&
                    device.attributes["<driver>"].resource == "smarter-devices/ttyUSB0"

**Why a controller, not the node daemons, not the chart**: a DeviceClass is cluster-scoped, and a
node's daemon must not hold cluster-wide write rights (one compromised node could then redirect
every pod's devices); the chart cannot know which names the fleet has (they come from the rules
*and* the hardware, e.g. ``ttyUSB1`` appears when a second adapter is plugged). One replica with
its own ServiceAccount, allowed by an admission policy to touch only classes labelled as its own,
named with the driver's prefix, naming extended resources under the configured prefix.

**What it never does**: touch a class it does not manage (its labels say which); take a name or an
extended resource name that a class it does not manage already has (the scheduler would pick the
newer of two classes for one name; an administrator's own class wins and ours is not made).

**Removal grace**: a resource that no slice carries any more keeps its class for ``grace``
seconds (default 300), so a device unplugged for a moment, a node rebooting, or a kubelet
restart (which deletes the node's slices until the daemon publishes them again) does not make
pending pods lose their class. Running pods never depend on the class: their claims are
allocated.

Pure functions (``resources_in``, ``desired``, ``plan``) compute; :class:`ClassController` does
the I/O: two mirrors (``mirror.py``), one writer that wakes on a change or when a grace ends.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from smarter_device_manager.dra import supervise
from smarter_device_manager.dra.kube import KubeClient, KubeError, path_of, within
from smarter_device_manager.dra.mirror import BACKOFF_MAX, BACKOFF_START, Mirror, jitter
from smarter_device_manager.dra.supervise import Supervisor
from smarter_device_manager.metrics import Metrics
from smarter_device_manager.naming import name_problem, prefix_problem

log = logging.getLogger(__name__)

API_VERSION = "resource.k8s.io/v1"
SLICES = "resourceslices.resource.k8s.io"
CLASSES = "deviceclasses.resource.k8s.io"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "smarter-device-manager-dra-classes"
DRIVER_LABEL = "smarter-device-manager/driver"
RESOURCE_ANNOTATION = "smarter-device-manager/extended-resource"
DEFAULT_GRACE = 300.0
VALUE_MAX = 64  # the API's limit for a string attribute: longer resource names arrive cut
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")

FAMILIES: dict[str, tuple[str, str]] = {
    "build_info": ("gauge", "Version of the running controller."),
    "dra_classes_resources": ("gauge", "Extended resource names the driver's slices carry now."),
    "dra_classes_managed": ("gauge", "DeviceClasses this controller manages."),
    "dra_classes_in_sync": ("gauge", "1 when the API server holds exactly the classes wanted."),
    "dra_class_writes_total": ("counter", "create/update/delete of DeviceClasses."),
    "dra_api_errors_total": ("counter", "API errors, by verb and HTTP status (0: unreachable)."),
    **supervise.FAMILY,
}


@dataclass(frozen=True)
class Found:
    """What the slices say: resource name -> nodes that have it, and values that cannot map."""

    resources: Mapping[str, frozenset[str]]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Write:
    """One API write: ``create``, ``update`` (body carries the resourceVersion) or ``delete``."""

    verb: str
    name: str
    body: dict[str, Any] | None = None
    why: str = ""


@dataclass(frozen=True)
class Plan:
    writes: tuple[Write, ...]
    notes: tuple[str, ...]  # what it will not do and why (logged when they change)


def extended_resource_problem(name: str, prefix: str) -> str | None:
    """Why ``name`` cannot be a DeviceClass's extendedResourceName under ``prefix``."""
    domain, sep, short = name.partition("/")
    if not sep:
        return "it has no '<prefix>/' part"
    if domain != prefix:
        return (f"its prefix is {domain!r}, not the controller's --resource-prefix {prefix!r} (run "
                "the node daemons and this controller with the same prefix)")
    problem = prefix_problem(domain) or name_problem(short)
    return problem


def resources_in(slices: Iterable[Mapping[str, Any]], driver: str, prefix: str) -> Found:
    """The ``resource`` attribute values of the driver's devices, with the nodes that have them."""
    nodes: dict[str, set[str]] = {}
    problems: dict[str, str] = {}
    for obj in slices:
        spec = obj.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        node = str(spec.get("nodeName") or (spec.get("pool") or {}).get("name") or "?")
        for device in spec.get("devices") or ():
            attributes = device.get("attributes") or {}
            value = (attributes.get("resource") or attributes.get(f"{driver}/resource") or {}).get("string")
            if not isinstance(value, str):
                continue  # not a device of ours that device-plugin mode would have advertised
            problem = extended_resource_problem(value, prefix)
            if problem is not None:
                problems.setdefault(value, f"device {device.get('name')} on {node}: resource {value!r} "
                                    f"cannot be an extended resource name: {problem}; pods cannot ask "
                                    "for it in resources.limits (a ResourceClaim still can)")
                continue
            nodes.setdefault(value, set()).add(node)
    for value in nodes:
        if len(value) == VALUE_MAX:
            problems.setdefault(value, f"resource {value!r} is {VALUE_MAX} characters, the API's limit "
                                "for an attribute: if the rule's resource name is longer it was cut, "
                                "and pods asking for the full name will not find this class")
    return Found({k: frozenset(v) for k, v in sorted(nodes.items())}, tuple(problems.values()))


def _label(text: str) -> str:
    """A DNS label for a resource name (``ttyUSB0`` -> ``ttyusb0``, ``net_tun`` -> ``net-tun``)."""
    core = _NOT_LABEL.sub("-", text.lower().replace(".", "-").replace("_", "-")).strip("-")
    return core[:63].strip("-") or "r"


def class_names(driver: str, resources: Iterable[str]) -> dict[str, str]:
    """Resource name -> class name ``<driver>-<label>``. Deterministic: the label is the part after
    the prefix folded to a DNS label; names whose labels collide (``ttyUSB0`` and ``ttyusb0``) all
    get a crc32 of the full resource name appended, so no two resources share a class."""
    by_label: dict[str, list[str]] = {}
    for resource in sorted(set(resources)):
        by_label.setdefault(_label(resource.partition("/")[2]), []).append(resource)
    names = {}
    for label, members in by_label.items():
        for resource in members:
            if len(members) == 1:
                names[resource] = f"{driver}-{label}"
            else:
                digest = f"{binascii.crc32(resource.encode()):08x}"
                names[resource] = f"{driver}-{label[:63 - 9].strip('-')}-{digest}"
    return names


def selector(driver: str, resource: str) -> str:
    """The CEL selector of the devices device-plugin mode advertised as ``resource``."""
    return (f'device.driver == "{driver}" && '
            f'device.attributes["{driver}"].resource == "{resource}"')


def labels(driver: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, DRIVER_LABEL: driver}


def desired(driver: str, resources: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Class name -> the DeviceClass to hold, for each resource name (already validated)."""
    wanted = {}
    for resource, name in class_names(driver, resources).items():
        wanted[name] = {
            "apiVersion": API_VERSION, "kind": "DeviceClass",
            "metadata": {"name": name, "labels": labels(driver),
                         "annotations": {RESOURCE_ANNOTATION: resource}},
            "spec": {"selectors": [{"cel": {"expression": selector(driver, resource)}}],
                     "extendedResourceName": resource},
        }
    return wanted


def managed(obj: Mapping[str, Any], driver: str) -> bool:
    found = (obj.get("metadata") or {}).get("labels") or {}
    return all(found.get(k) == v for k, v in labels(driver).items())


def resource_of(obj: Mapping[str, Any]) -> str | None:
    """The extended resource name a class of ours maps (the annotation, if the server dropped the
    field)."""
    found = (obj.get("spec") or {}).get("extendedResourceName") or \
        ((obj.get("metadata") or {}).get("annotations") or {}).get(RESOURCE_ANNOTATION)
    return str(found) if found else None


def _same(held: Mapping[str, Any], want: Mapping[str, Any], gate_off: bool) -> bool:
    spec, meta = held.get("spec") or {}, held.get("metadata") or {}
    resource_ok = spec.get("extendedResourceName") == want["spec"]["extendedResourceName"] or (
        gate_off and "extendedResourceName" not in spec)
    return (spec.get("selectors") == want["spec"]["selectors"] and resource_ok
            and not spec.get("config")
            and all((meta.get("labels") or {}).get(k) == v for k, v in want["metadata"]["labels"].items())
            and (meta.get("annotations") or {}).get(RESOURCE_ANNOTATION)
            == want["metadata"]["annotations"][RESOURCE_ANNOTATION])


def plan(driver: str, wanted: Mapping[str, dict[str, Any]],
         observed: Mapping[str, Mapping[str, Any]], gate_off: bool = False) -> Plan:
    """The writes that make the classes we manage equal ``wanted``, leaving every other class alone.

    ``observed`` is every DeviceClass in the cluster (foreign ones are read only to avoid them).
    ``gate_off``: the API server drops ``spec.extendedResourceName`` (DRAExtendedResource off, as
    by default before 1.36); a class without it is then as good as it gets, not rewritten for ever.
    """
    writes: list[Write] = []
    notes: list[str] = []
    foreign_names: dict[str, str] = {}
    for name, obj in observed.items():
        resource = (obj.get("spec") or {}).get("extendedResourceName")
        if not managed(obj, driver) and isinstance(resource, str):
            foreign_names.setdefault(resource, name)
    keep: set[str] = set()
    for name, want in sorted(wanted.items()):
        resource = want["spec"]["extendedResourceName"]
        held = observed.get(name)
        if resource in foreign_names:
            notes.append(f"{resource}: DeviceClass {foreign_names[resource]} (not managed by this "
                         f"controller) already maps it; leaving {resource} to that class")
            continue
        if held is not None and not managed(held, driver):
            notes.append(f"{resource}: a DeviceClass named {name} exists and is not managed by this "
                         "controller; not touching it, so pods asking for "
                         f"{resource} in resources.limits are not served by DRA (rename or delete "
                         "that class)")
            continue
        keep.add(name)
        if held is None:
            writes.append(Write("create", name, dict(want), f"{resource} is on a node"))
        elif not _same(held, want, gate_off):
            held_meta = held.get("metadata") or {}
            body = {**want, "metadata": {
                **want["metadata"], "resourceVersion": held_meta.get("resourceVersion", ""),
                "labels": {**(held_meta.get("labels") or {}), **want["metadata"]["labels"]}}}
            writes.append(Write("update", name, body, "it differs from what the controller wants"))
    for name, obj in sorted(observed.items()):
        if name not in keep and managed(obj, driver):
            resource = resource_of(obj)
            writes.append(Write("delete", name, None, f"no node has had {resource} for the grace period"
                                if name not in wanted else f"{resource} is left to another class"))
    return Plan(tuple(writes), tuple(notes))


def with_grace(present: Iterable[str], missing_since: dict[str, float], held: Iterable[str], now: float,
               grace: float) -> tuple[set[str], float | None]:
    """The resources to keep classes for: those present, and those of classes we hold that have
    been missing for less than ``grace``.

    ``missing_since`` (updated here) is when the controller first saw each held resource missing:
    the grace counts from then, not from when it last looked (an idle controller's last look may
    be long ago). A class found at start for a resource no node has gets a grace from now.
    Returns the set and when the next grace ends (None if none is running)."""
    present = set(present)
    held = set(held)
    for resource in list(missing_since):
        if resource in present or resource not in held:
            del missing_since[resource]
    keep = set(present)
    next_end: float | None = None
    for resource in held - present:
        end = missing_since.setdefault(resource, now) + grace
        if end > now:
            keep.add(resource)
            next_end = end if next_end is None else min(next_end, end)
    return keep, next_end


class ClassController:
    """Keeps the classes; ``run`` until cancelled."""

    def __init__(self, client: KubeClient, driver: str, prefix: str, grace: float, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.driver = driver
        self.prefix = prefix
        self.grace = grace
        self.metrics = metrics
        self.supervisor = Supervisor(metrics)
        self.clock = clock
        self.error: str | None = None
        self.in_sync = False
        self.resources: Mapping[str, frozenset[str]] = {}
        self.gate_off = False  # the server drops spec.extendedResourceName
        self._wake = asyncio.Event()
        self._missing_since: dict[str, float] = {}
        self._said: set[str] = set()
        self.slices = Mirror(client, path_of(API_VERSION, "resourceslices"), SLICES,
                             {"fieldSelector": f"spec.driver={driver}"}, self._wake.set, self._fail)
        self.classes = Mirror(client, path_of(API_VERSION, "deviceclasses"), CLASSES, {},
                              self._wake.set, self._fail)
        metrics.collectors.append(self._gauges)

    def _gauges(self) -> Iterable[tuple[str, tuple[tuple[str, str], ...], float]]:
        yield "dra_classes_resources", (), float(len(self.resources))
        yield "dra_classes_managed", (), float(sum(1 for c in self.classes.objects.values()
                                                   if managed(c, self.driver)))
        yield "dra_classes_in_sync", (), float(self.in_sync)

    @property
    def ready(self) -> list[str]:
        """Why it is not ready (empty: ready)."""
        reasons = []
        if not self.slices.synced or not self.classes.synced:
            reasons.append("the ResourceSlices and DeviceClasses are not listed yet")
        if self.error:
            reasons.append(f"API server: {self.error}")
        return reasons + self.supervisor.reasons()

    def _fail(self, exc: KubeError) -> None:
        self.metrics.inc("dra_api_errors_total", verb=exc.verb or "?", code=str(exc.status))
        message = str(exc)
        if exc.status == 403:  # kube.py's advice names the node daemon's ServiceAccount and RBAC
            message = message.replace("the daemon's ServiceAccount", "the dra-classes controller's "
                                      "ServiceAccount").replace("templates/dra-rbac.yaml",
                                                                "templates/dra-classes.yaml")
        if message != self.error:
            log.error("API server: %s", message)
        self.error = message

    def _say(self, lines: Iterable[str]) -> None:
        """Log each problem once while it lasts (the plan runs on every event)."""
        lines = set(lines)
        for line in sorted(lines - self._said):
            log.warning("%s", line)
        self._said = lines

    async def run(self) -> None:
        """The writer and both mirrors, each started again if it fails with a bug (supervise.py)."""
        await asyncio.gather(self.supervisor.start("the class writer", self._writer),
                             self.supervisor.start("the slice mirror", self.slices.run),
                             self.supervisor.start("the class mirror", self.classes.run))

    def _plan(self) -> tuple[Plan, float | None]:
        found = resources_in(self.slices.objects.values(), self.driver, self.prefix)
        if found.resources.keys() != self.resources.keys():
            log.info("extended resources on the nodes: %s", ", ".join(found.resources) or "none")
        self.resources = found.resources
        held = [r for c in self.classes.objects.values() if managed(c, self.driver)
                and (r := resource_of(c)) is not None]
        keep, next_end = with_grace(found.resources, self._missing_since, held, self.clock(), self.grace)
        result = plan(self.driver, desired(self.driver, keep), self.classes.objects, self.gate_off)
        self._say(found.problems + result.notes)
        return result, next_end

    async def _writer(self) -> None:
        delay = BACKOFF_START
        next_end: float | None = None
        self._wake.set()  # plan at once: this may be a restart after a bug (supervise.py)
        while True:
            timeout = None if next_end is None else max(0.0, next_end - self.clock())
            with contextlib.suppress(asyncio.TimeoutError):  # a grace ended
                await within(self._wake.wait(), timeout)
            self._wake.clear()
            if not (self.slices.synced and self.classes.synced):
                continue
            result, next_end = self._plan()
            self.in_sync = not result.writes
            try:
                for write in result.writes:
                    await self._apply(write)
            except KubeError as exc:
                self._fail(exc)
                await asyncio.sleep(jitter(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                self._wake.set()
                continue
            if result.writes:
                self._wake.set()  # plan again: in sync once nothing is left to write
            if self.error is not None and self.slices.watching and self.classes.watching:
                log.info("API server: reachable again")
                self.error = None
            delay = BACKOFF_START

    async def _apply(self, write: Write) -> None:
        path = path_of(API_VERSION, "deviceclasses", write.name)
        if write.verb == "delete":
            try:
                await self.client.request("DELETE", path, verb="delete", resource=CLASSES)
            except KubeError as exc:
                if not exc.not_found:
                    raise
            self.classes.dropped(write.name)
        else:
            if write.verb == "create":
                stored = await self.client.request("POST", path_of(API_VERSION, "deviceclasses"), write.body,
                                                   verb="create", resource=CLASSES)
            else:
                stored = await self.client.request("PUT", path, write.body, verb="update", resource=CLASSES)
            self.classes.took(stored)
            if "extendedResourceName" not in (stored.get("spec") or {}) and not self.gate_off:
                self.gate_off = True
                log.error("the API server dropped spec.extendedResourceName of DeviceClass %s: its "
                          "DRAExtendedResource feature is off (the default before Kubernetes 1.36), so "
                          "pods asking in resources.limits are not served by DRA; the classes are kept "
                          "for when it is on", write.name)
        self.metrics.inc("dra_class_writes_total", verb=write.verb)
        log.info("DeviceClass %s: %sd (%s)", write.name, write.verb, write.why)
