"""Which host paths a rule's ``mounts`` may hand to a container: an allowlist, not a denylist.

Whoever can edit the rules (a ConfigMap) is not necessarily whoever may run privileged pods, yet
a mount is handed to any pod that asks for the rule's device. A denylist let through
``/run/containerd/containerd.sock``, ``/var/run/docker.sock``, ``/etc`` and ``/root``, and a
read-only bind of a socket still connects: control of the node. So a mount's host path must lie
under a tree that holds what devices need and nothing that controls the node:

* ``/sys/class``, ``/sys/bus``, ``/sys/devices``: a device's sysfs view (``/sys/class/gpio``);
  ``/sys/firmware/devicetree``: the board's device tree (HAT EEPROMs, overlays);
* ``/lib/firmware``, ``/usr/lib/firmware``: firmware blobs; ``/usr/share``: data files.

The escape hatch belongs to whoever deploys the daemon, not to the config: ``--allow-mount-prefix``
(``SDM_ALLOW_MOUNT_PREFIX``, ``:``-separated directories) adds trees, set once at start
(:func:`allow`). Even then ``/``, ``/proc``, ``/dev`` and ``/var/lib/kubelet`` stay out.

Checked twice: the config's text (:func:`config_problem`, so ``check-config`` says it with file
and line), and on the node before a mount is handed over (:func:`host_problem`), where the path is
resolved: a symlink out of the allowed trees, a socket, a FIFO or a device node is refused.
"""

from __future__ import annotations

import os
import stat

DEFAULT_PREFIXES = ("/sys/class", "/sys/bus", "/sys/devices", "/sys/firmware/devicetree",
                    "/lib/firmware", "/usr/lib/firmware", "/usr/share")
# Never, not even through the escape hatch: the process table, device nodes (only the device
# checks hand those over) and the kubelet's sockets and pod volumes.
FORBIDDEN = ("/proc", "/dev", "/var/lib/kubelet")
OPTION = "--allow-mount-prefix"
VARIABLE = "SDM_ALLOW_MOUNT_PREFIX"

_extra: tuple[str, ...] = ()


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be allowed (for the option's check), or None."""
    if not prefix.startswith("/") or os.path.normpath(prefix) != prefix:
        return f"{prefix!r} must be a plain absolute path (no '..', '.', '//' or trailing '/')"
    if prefix == "/":
        return "'/' would allow every host path"
    for root in FORBIDDEN:
        if under(prefix, root) or under(root, prefix):
            return f"{prefix!r} would allow {root}, which no mount may expose"
    return None


def parse_prefixes(text: str) -> tuple[str, ...]:
    """``/opt/calib:/srv/maps`` -> the prefixes; ValueError naming the bad one."""
    prefixes = tuple(p for p in text.split(":") if p)
    for prefix in prefixes:
        problem = prefix_problem(prefix)
        if problem:
            raise ValueError(problem)
    return prefixes


def allow(prefixes: tuple[str, ...]) -> None:
    """Add the deployer's trees for this process (called once, from the command line)."""
    global _extra
    _extra = prefixes


def allowed() -> tuple[str, ...]:
    return DEFAULT_PREFIXES + _extra


def config_problem(host_path: str) -> str | None:
    """Why a rule may not mount ``host_path`` (a normalized absolute path), or None."""
    for root in FORBIDDEN:
        if under(host_path, root):
            return f"is under {root}, which is not allowed here"
    if any(under(host_path, prefix) for prefix in allowed()):
        return None
    return (f"is outside the host paths a mount may expose ({', '.join(allowed())}): a mount of "
            "/run, /etc, /root, /var/lib or a container runtime's socket would give every pod that "
            f"asks for the device control of the node. Use a path under one of those; if the node "
            f"really needs this one, whoever deploys the daemon can add its directory with "
            f"{OPTION} ({VARIABLE})")


def host_problem(host_path: str, missing_ok: bool = False) -> str | None:
    """Why ``host_path`` may not be bind-mounted now, as the daemon sees it on the node, or None.

    It must exist (unless ``missing_ok``: the CDI writer, whose devices discovery has checked)
    and be a regular file or a directory, and resolve (symlinks followed, as the runtime's bind
    mount follows them) to a path that is still allowed."""
    try:
        mode = os.stat(host_path).st_mode
    except OSError:
        return None if missing_ok else f"mount source {host_path} does not exist on this node"
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        what = ("a socket" if stat.S_ISSOCK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
        return f"mount source {host_path} is {what}, not a file or directory: refused"
    real = os.path.realpath(host_path)
    if real != host_path and config_problem(real) is not None:
        return (f"mount source {host_path} resolves to {real}, outside the host paths a mount may "
                f"expose: refused")
    return None
