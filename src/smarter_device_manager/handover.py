"""What a container gets for a resource: its nodes at their container paths, env, mounts.

One function decides it for both ways a device reaches a container: the device
plugin's Allocate answer (DeviceSpecs, envs, mounts) and the CDI spec the runtime
reads. So a container sees the same thing whichever way it was given the device,
and the rules for container paths live in one place:

* a node appears at ``/dev/<path>``, or at the rule's ``containerpath``; a
  directory resource keeps its layout below that path;
* a pool numbers ``containerpath`` per device handed over (``/dev/serial0``,
  ``/dev/serial1``, in the order the IDs were asked), and says which devices it
  gave in ``<NAME>_IDS``;
* ``<PREFIX>_<NAME>`` lists the container paths (``SMARTER_DEVICES_GPS=/dev/gps``),
  so a program finds its devices without knowing the node's kernel names;
* the original's ``nvidia-gpu`` sets ``NVIDIA_VISIBLE_DEVICES`` instead.

Pure: no I/O. Checking that each node is still a device is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from smarter_device_manager.discovery import KIND_NVIDIA, KIND_POOL, DeviceNode, Member, Resource
from smarter_device_manager.rules import Mount


@dataclass(frozen=True, slots=True)
class Handover:
    nodes: tuple[tuple[DeviceNode, str], ...]  # (node, container path)
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]


def env_name(resource_name: str) -> str:
    """``smarter-devices/usb-serial`` -> ``SMARTER_DEVICES_USB_SERIAL``."""
    return "".join(c if c.isalnum() and c.isascii() else "_" for c in resource_name.upper())


def member_ids(member: Member, count: int) -> list[str]:
    """A pool member's device IDs: its identity, or identity-0.. when it may be shared."""
    if count == 1:
        return [member.identity]
    return [f"{member.identity}-{i}" for i in range(count)]


def handover(resource_name: str, resource: Resource, nodes: tuple[DeviceNode, ...] | None = None,
             members: list[Member] | None = None) -> Handover:
    """What a container asking for ``resource`` gets.

    ``nodes`` replaces the resource's own (a directory listed again at Allocate);
    ``members`` are the pool devices handed over, in the order asked.
    """
    rule = resource.rule
    placed: list[tuple[DeviceNode, str]] = []
    env = dict(rule.env)
    variable = env_name(resource_name)
    if resource.kind == KIND_POOL:
        given = members if members is not None else list(resource.members)
        for number, member in enumerate(given):
            for node in member.nodes:
                placed.append((node, numbered(rule.container_path, number, len(member.nodes), node)))
        env[variable + "_IDS"] = ",".join(m.identity for m in given)
    else:
        for node in resource.nodes if nodes is None else nodes:
            target = f"/dev/{node.path}"
            if rule.container_path and resource.kind != KIND_NVIDIA:
                target = rule.container_path + node.path[len(resource.path):]
            placed.append((node, target))
    if resource.kind == KIND_NVIDIA:
        env["NVIDIA_VISIBLE_DEVICES"] = resource.gpu
    else:
        env[variable] = ",".join(target for _, target in placed)
    return Handover(tuple(placed), tuple(env.items()), rule.mounts)


def numbered(container_path: str | None, number: int, nodes: int, node: DeviceNode) -> str:
    """Where the ``number``-th pool device handed to a container appears."""
    if container_path is None:
        return f"/dev/{node.path}"
    if nodes == 1:
        return f"{container_path}{number}"
    return f"{container_path}{number}/{node.path.rsplit('/', 1)[-1]}"
