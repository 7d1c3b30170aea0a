"""ResourceSlices: this node's DRA devices -> the slices to publish, and the fewest writes to get there.

Pure: no I/O, no clock. The publisher (``publisher.py``) feeds it what the API server holds
(from its list and watch) and carries out the writes it returns.

Shape of what we publish: one pool per node, named after the node, split into slices of at most
128 devices (the API's limit), named ``<node>-<driver>-<n>``. Fixed names rather than
``generateName`` so that a restarted daemon finds its slices again and, when nothing changed,
writes nothing at all.

**Sharing** (``nummaxdevices``): 1 publishes a plain device, which one ResourceClaim gets at a
time; any number of pods may share that claim, which is DRA's own way to share a device. N > 1
also sets ``allowMultipleAllocations`` with a consumable capacity ``shares`` of N (each claim
takes one by default, and may ask for up to N, i.e. all of it), so up to N claims hold the device
at once: DRA's consumable capacity (KEP-5075, beta and on by default in Kubernetes 1.36). A 1.34
or 1.35 API server without that feature drops the two fields, and the device simply behaves as
with 1: one claim, shared by pods. docs/dra.md says the same for users.

**Unplugged devices** (``unplugged.py``) stay in the slice through the removal grace with a
taint (``<driver>/unplugged``), so no new claim is allocated a device that may come back. The
API allows 64 devices per slice instead of 128 when any device of the slice has a taint, so
slices are cut at 64 while any device is tainted. The server sets a taint's ``timeAdded`` when we
send none; we send back the time it stored (for the same device, key, value and effect), so our
writes never move it and a slice the server holds with that time counts as in sync.

**Owner**: every slice names its Node as owner (``metadata.ownerReferences``, as the Go helper
k8s.io/dynamic-resource-allocation does: apiVersion v1, kind Node, name, uid, controller), so the
garbage collector deletes the slices with the node. The writes carry it (a PUT replaces the whole
object), and a slice without it (published before) is rewritten once to get it.

**Generations**: whenever anything in the pool changes, every slice of the pool gets the next
generation (the API's contract: consumers use the highest generation they see). With up to 128
devices that is one update per change. A slice the server stored differently from what we sent
(fields a server without a feature drops) is remembered as an *echo*, so it is not rewritten in a
loop.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smarter_device_manager.dra.devices import DraDevice
from smarter_device_manager.dra.validation import fit_entry

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES = 128
MAX_DEVICES_TAINTED = 64  # ResourceSliceMaxDevicesWithAdvancedFeatures: any device has taints
SHARES = "shares"
NAME_MAX = 253
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True)
class Write:
    """One API write: ``create``, ``update`` (with the resourceVersion it replaces) or ``delete``."""

    verb: str
    name: str
    body: dict[str, Any] | None = None
    resource_version: str = ""


@dataclass(frozen=True)
class Echo:
    """What we last sent for a slice's spec and what the server stored from it."""

    sent: dict[str, Any]
    stored: dict[str, Any]


def owner_reference(node: str, uid: str) -> dict[str, Any]:
    """The Node as the slices' owner (its uid from a GET of the node: the owner must be exact)."""
    return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": True}


def _owned(obj: Mapping[str, Any], owner: Mapping[str, Any] | None) -> bool:
    if owner is None:
        return True
    return any(isinstance(ref, dict) and ref.get("uid") == owner["uid"] and ref.get("kind") == "Node"
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or ())


def slice_name(node: str, driver: str, index: int) -> str:
    """``<node>-<driver>-<index>`` as a DNS subdomain, shortened with a crc32 when too long."""
    raw = f"{node}-{driver}-{index}".lower()
    name = _NOT_NAME.sub("-", raw).strip("-.")
    if len(name) <= NAME_MAX and name == raw:
        return name
    digest = f"{binascii.crc32(raw.encode()):08x}"
    return f"{name[:NAME_MAX - len(digest) - 1].rstrip('-.')}-{digest}"


def device_entry(device: DraDevice) -> dict[str, Any]:
    """The ``spec.devices[]`` entry of one device."""
    entry: dict[str, Any] = {"name": device.name, "attributes": dict(device.attributes)}
    if device.shares > 1:
        count = str(device.shares)
        entry["allowMultipleAllocations"] = True
        entry["capacity"] = {SHARES: {
            "value": count,
            "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": count, "step": "1"}},
        }}
    return entry


def fit(devices: Sequence[DraDevice]) -> tuple[list[DraDevice], list[str]]:
    """The devices as the API server will take them, and what had to be left out, and why.

    Each device's entry is checked with the server's rules (``validation.fit_entry``): an
    attribute it would refuse is dropped from its device, a device that still does not fit is
    left out, and so is a second device of a name already taken (the server refuses a slice with
    two; ``devices._unique`` should have made that impossible, this makes sure before any write).
    One device that cannot be published never stops the others.
    """
    kept: list[DraDevice] = []
    problems: list[str] = []
    seen: set[str] = set()
    for device in devices:
        fitted, why = fit_entry(device_entry(device))
        problems += why
        if fitted is None:
            problems.append(f"{device.where}: not published in DRA mode (the API server would refuse "
                            f"the node's whole slice)")
            continue
        if device.name in seen:
            problems.append(f"{device.where}: not published in DRA mode: device name {device.name} is "
                            "taken by another device")
            continue
        seen.add(device.name)
        if fitted["attributes"] != dict(device.attributes):
            device = DraDevice(device.name, device.resource, tuple(sorted(fitted["attributes"].items())),
                               device.nodes, device.member)
        kept.append(device)
    return kept, problems


def desired_specs(node: str, driver: str, devices: Sequence[DraDevice], generation: int,
                  unplugged: Sequence[Mapping[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """The slices' specs by name, for ``generation``. No devices: one empty slice, which tells the
    scheduler this node's pool exists and is empty (rather than unknown).

    ``unplugged``: entries of devices in their removal grace, with their taints (a present device
    of the same name wins).
    """
    present = {d.name for d in devices}
    entries = [device_entry(d) for d in devices] + \
        [json_copy(e) for e in unplugged if e["name"] not in present]
    entries.sort(key=lambda e: str(e["name"]))
    size = MAX_DEVICES_TAINTED if any(e.get("taints") for e in entries) else MAX_DEVICES
    chunks = [entries[i:i + size] for i in range(0, len(entries), size)] or [[]]
    return {
        slice_name(node, driver, index): {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": len(chunks)},
            "devices": chunk,
        }
        for index, chunk in enumerate(chunks)
    }


def json_copy(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of plain JSON data (entries are shared with the tracker; specs are edited)."""
    return {k: json_copy(v) if isinstance(v, Mapping) else
            [json_copy(i) if isinstance(i, Mapping) else i for i in v] if isinstance(v, list) else v
            for k, v in entry.items()}


def _taint_id(taint: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(taint.get("key", "")), str(taint.get("value", "")), str(taint.get("effect", ""))


def keep_time_added(specs: Mapping[str, dict[str, Any]], observed: Mapping[str, Mapping[str, Any]]) -> None:
    """Give each taint we want the ``timeAdded`` the server stored for the same device and taint.

    The server sets it (to the second) when a taint arrives without one; sending it back keeps it
    across our later writes and our restarts, and makes the stored slice equal to what we want.
    """
    stored: dict[tuple[str, tuple[str, str, str]], Any] = {}
    for obj in observed.values():
        for device in (obj.get("spec") or {}).get("devices") or ():
            for taint in device.get("taints") or ():
                if taint.get("timeAdded"):
                    stored[(str(device.get("name")), _taint_id(taint))] = taint["timeAdded"]
    for spec in specs.values():
        for device in spec["devices"]:
            for taint in device.get("taints") or ():
                if not taint.get("timeAdded"):
                    found = stored.get((str(device["name"]), _taint_id(taint)))
                    if found:
                        taint["timeAdded"] = found


def _without_generation(spec: Mapping[str, Any]) -> dict[str, Any]:
    pool = dict(spec.get("pool") or {})
    pool.pop("generation", None)
    return {**spec, "pool": pool}


def _generation(obj: Mapping[str, Any]) -> int:
    try:
        return int(((obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


def in_sync(desired: Mapping[str, Any], observed: Mapping[str, Any], echo: Echo | None) -> bool:
    """Does the stored slice already say what we want (ignoring the pool generation)?"""
    spec = _without_generation(observed.get("spec") or {})
    want = _without_generation(desired)
    if spec == want:
        return True
    return echo is not None and _without_generation(echo.sent) == want and \
        _without_generation(echo.stored) == spec


def plan(node: str, driver: str, devices: Sequence[DraDevice], observed: Mapping[str, Mapping[str, Any]],
         echoes: Mapping[str, Echo], owner: Mapping[str, Any] | None = None,
         unplugged: Sequence[Mapping[str, Any]] = ()) -> list[Write]:
    """The writes that make the API server hold exactly our pool; [] when it already does.

    ``observed``: our slices as the server has them (name -> object with metadata and spec).
    ``owner``: the ownerReference every slice must carry (None: not known yet, not checked).
    ``unplugged``: tainted entries of devices in their removal grace (see ``desired_specs``).
    """
    generations = {_generation(obj) for obj in observed.values()}
    current = max(generations, default=0)
    desired = desired_specs(node, driver, devices, current or 1, unplugged)
    keep_time_added(desired, observed)
    if set(desired) == set(observed) and len(generations) == 1 and all(
            in_sync(spec, observed[name], echoes.get(name)) and _owned(observed[name], owner)
            for name, spec in desired.items()):
        return []
    generation = current + 1
    writes: list[Write] = []
    wanted = desired_specs(node, driver, devices, generation, unplugged)
    keep_time_added(wanted, observed)
    for name, spec in wanted.items():
        metadata: dict[str, Any] = {"name": name}
        if owner is not None:
            metadata["ownerReferences"] = [dict(owner)]
        body = {"apiVersion": API_VERSION, "kind": "ResourceSlice", "metadata": metadata, "spec": spec}
        if name in observed:
            version = str((observed[name].get("metadata") or {}).get("resourceVersion", ""))
            metadata["resourceVersion"] = version
            writes.append(Write("update", name, body, version))
        else:
            writes.append(Write("create", name, body))
    writes += [Write("delete", name) for name in sorted(set(observed) - set(desired))]
    return writes
