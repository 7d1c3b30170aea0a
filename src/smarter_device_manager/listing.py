"""What ``list`` prints: each resource, its device nodes, and what sysfs says of them.

This is the ``udevadm info -a`` of the product: a user writes an attribute
rule from what they see here (``list --all`` adds the nodes no rule selects
yet). It only reads; the resources themselves come from ``discovery`` exactly
as the daemon computes them, so what is listed is what is advertised.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from smarter_device_manager.discovery import KIND_POOL, Inventory, Resource, own_levels
from smarter_device_manager.sysfs import Sysfs, SysfsError
from smarter_device_manager.udevmatch import lookup

# Shown in the table, nearest level first; JSON has every attribute of every level.
SUMMARY_KEYS = ("idVendor", "idProduct", "serial", "manufacturer", "product", "name", "vendor", "device")


def describe_inventory(inventory: Inventory, prefix: str, dev_dir: str, sys_dir: str,
                       include_unselected: bool) -> list[dict[str, Any]]:
    """One JSON-able row per resource (and one for the unselected nodes if asked)."""
    sysfs = Sysfs(sys_dir)
    rows: list[dict[str, Any]] = []
    selected: set[str] = set()
    for resource in inventory.resources.values():
        devices = [_device(sysfs, dev_dir, path, identity) for path, identity in _nodes(resource)]
        selected.update(d["path"] for d in devices)
        rows.append({
            "resource": f"{prefix}/{resource.name}",
            "count": _count(resource),
            "kind": resource.kind,
            "rule": resource.rule.index,
            "paths": sorted(d["path"] for d in devices),
            "devices": devices,
        })
    if include_unselected:
        others = [_device(sysfs, dev_dir, rel, "") for rel in _device_nodes(dev_dir)
                  if f"/dev/{rel}" not in selected]
        rows.append({"resource": None, "count": 0, "kind": "unselected", "rule": None,
                     "paths": [d["path"] for d in others], "devices": others})
    return rows


def _count(resource: Resource) -> int:
    if resource.kind == KIND_POOL:
        return resource.count * len(resource.members)
    return resource.count


def _nodes(resource: Resource) -> list[tuple[str, str]]:
    """(node path relative to the dev root, pool identity or '') for every node."""
    if resource.kind == KIND_POOL:
        return [(node.source, m.identity) for m in resource.members for node in m.nodes]
    return [(node.source, "") for node in resource.nodes]


def _device(sysfs: Sysfs, dev_dir: str, rel: str, identity: str) -> dict[str, Any]:
    info: dict[str, Any] = {"path": f"/dev/{rel}"}
    if identity:
        info["identity"] = identity
    try:
        st = os.stat(os.path.join(dev_dir, rel))
        info["type"] = "block" if stat.S_ISBLK(st.st_mode) else "char"
        info["major"], info["minor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
        chain = sysfs.chain(sysfs.device_dir(stat.S_ISBLK(st.st_mode), info["major"], info["minor"]))
    except OSError as exc:
        info["error"] = exc.strerror or str(exc)
        return info
    except SysfsError as exc:
        info["error"] = str(exc)
        return info
    info["sysfs"] = [
        {"path": "/sys/" + level.path, "subsystem": level.subsystem, "driver": level.driver,
         "attributes": sysfs.attributes(level.path)}
        for level in chain
    ]
    info["summary"] = _summary(sysfs, chain)
    return info


def _summary(sysfs: Sysfs, chain: tuple[Any, ...]) -> dict[str, str]:
    """The attributes rules use most, each from the nearest level that has it (up to the
    device's USB device: hubs and host controllers above it are not the device)."""
    summary: dict[str, str] = {}
    chain = own_levels(sysfs, chain)
    if chain and chain[0].subsystem:
        summary["subsystem"] = chain[0].subsystem
    driver = lookup(sysfs, chain, "driver")
    if driver:
        summary["driver"] = driver
    for key in SUMMARY_KEYS:
        value = lookup(sysfs, chain, key)
        if value is not None:
            summary[key] = value
    return summary


def _device_nodes(dev_dir: str) -> list[str]:
    """Every character/block node below the dev root (symlinks and their directories not followed)."""
    found: list[str] = []
    for top, dirs, files in os.walk(dev_dir):
        rel_top = os.path.relpath(top, dev_dir)
        for name in files + dirs:
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            try:
                mode = os.lstat(os.path.join(dev_dir, rel)).st_mode
            except OSError:
                continue
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(rel)
    return sorted(found)


def render_table(rows: list[dict[str, Any]]) -> str:
    """The table: a line per resource, then an indented line per device with its summary."""
    width = max([len("RESOURCE")] + [len(str(r["resource"])) for r in rows if r["resource"]])
    lines = [f"{'RESOURCE':<{width}}  COUNT  PATHS"]
    for row in rows:
        if row["resource"] is None:
            lines.append("")
            lines.append("not selected by any rule:")
        else:
            paths = " ".join(_quote(p) for p in row["paths"])
            lines.append(f"{row['resource']:<{width}}  {row['count']:>5}  {paths}")
        for device in row["devices"]:
            lines.append("    " + _device_line(device))
    return "\n".join(lines) + "\n"


def _device_line(device: dict[str, Any]) -> str:
    head = _quote(device["path"]) + (f" [{_quote(device['identity'])}]" if device.get("identity") else "")
    if "error" in device:
        return f"{head}  (no sysfs: {_quote(device['error'], spaces=True)})"
    pairs = [f"{_quote(k)}={_quote(v)}" for k, v in device["summary"].items()]
    return f"{head}  {' '.join(pairs)}"


def printable(text: str) -> str:
    """``text`` with each character that is not printable written as its escape (``\\n``,
    ``\\x1b``): for messages that quote device names or sysfs strings, e.g. discovery's
    warnings, which ``list`` prints to the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _quote(value: str, spaces: bool = False) -> str:
    """``value`` as it may go on a terminal: as is when plain, else as a Python literal.

    Everything here comes from the node: sysfs strings are whatever a USB device reports (a
    product string may hold newlines and escape sequences, which drew a fake "not selected by any
    rule" section), and /dev names are whatever made them. ``repr`` escapes every character that
    is not printable (``\\n``, ``\\x1b``, ``\\u202e``), so one value stays one visible token.
    """
    if value.isprintable() and value and (spaces or " " not in value):
        return value
    return repr(value)
