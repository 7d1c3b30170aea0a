"""CDI specs: desired devices -> one Container Device Interface spec file, written atomically.

With CDI the kubelet only passes a name (``smarter-devices.io/device=gps``) to the container
runtime, which looks it up in a JSON spec under ``/etc/cdi`` or ``/var/run/cdi`` when it creates
the container. So this module is the whole contract with the runtimes, and it is shaped by what
they do with a spec:

* A runtime refuses the **whole file** when anything in it is wrong: an unknown ``cdiVersion``,
  a version lower than the fields need, a bad device name, an env entry without ``=``, a device
  with no edits, two devices with one name, a field it does not know. One bad device would take
  every device of the kind down with it, so :func:`build_spec` checks all of that itself and
  raises :class:`CdiError` for the one device, which the caller leaves out.
* ``cdiVersion`` is the lowest version that holds the fields used (:func:`min_version`, from
  the spec's table of released versions), because older runtimes refuse newer versions. Every
  device node here carries ``hostPath`` (the runtime must find the node where the host has it,
  not where the container sees it), which makes that 0.5.0: the newest version Podman 4.3's CDI
  library (Debian 12) knows, and one the CDI v1.1.0 library of containerd 2.3 accepts.
* Runtimes read the file when a container starts, at any moment. It is replaced by rename so a
  reader sees the old or the new file, never half of one; the temporary name does not end in
  ``.json`` so the runtimes' directory watchers never load it.

Everything is pure except :func:`build_spec` (it stats the nodes) and the three file functions.
Imports stay cheap (no pathlib, tempfile, shutil, hashlib): this loads in the daemon.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_KIND = "smarter-devices.io/device"
DEFAULT_DIR = "/var/run/cdi"

# Cgroup access for the node: read and write, never mknod ('m').
PERMISSIONS = "rw"
# A read-only bind mount as CDI producers write it (no "type": runtimes treat a mount whose
# options hold "bind" as a bind mount, and the type field would only be a dummy).
READ_ONLY_BIND = ("ro", "nosuid", "nodev", "bind")
FILE_MODE = 0o644
# More than any spec we write (1,000 devices take about 250 KB): a larger file is not ours.
SPEC_MAX = 64 << 20

# The spec's released versions, oldest first. 0.1.0 and 0.2.0 predate the tagged spec and no
# library accepts anything older than 0.3.0 as a floor; 0.8.0 and 1.0.0 changed only the Go API.
VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")

_DEVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.:-]")
_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_CLASS = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
CLASS_MAX = 63
VENDOR_MAX = 253


@dataclass(frozen=True, slots=True)
class NodeEdit:
    """One device node: where the container sees it, where the runtime finds it on the host,
    and where this daemon finds it (they differ when the daemon runs in a container with the
    host's /dev mounted elsewhere). Only ``local_path`` is ever opened by us."""

    container_path: str
    host_path: str
    local_path: str


@dataclass(frozen=True, slots=True)
class CdiDevice:
    """One CDI device: what a container that asks for ``<kind>=<name>`` gets."""

    name: str
    nodes: tuple[NodeEdit, ...]
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()  # (host_path, container_path), read-only


class CdiError(Exception):
    """A device or kind that no runtime would accept; the message is written for users."""


def _name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if not name.isascii() or not _DEVICE_NAME.match(name):
        return ("it must start and end with a letter or digit and hold only letters, digits "
                "and '_', '-', '.', ':'")
    return None


def device_name(name: str) -> str:
    """A valid CDI device name for a resource name or pool member id, the same every time.

    Valid names pass unchanged, and every resource name the kubelet accepts is one, so the CDI
    name reads like the resource. Anything else (a serial number with a space or a '/') gets
    each other character replaced by '_', letters or digits at both ends, and a crc32 of the
    original appended, so that 'a b' and 'a_b' cannot end up as one device. A name with no
    letter or digit at all has nothing left to recognise it by and raises CdiError.
    """
    if _name_problem(name) is None:
        return name
    core = _EDGE.sub("", _NOT_NAME_CHAR.sub("_", name))
    if not core:
        raise CdiError(f"cannot make a CDI device name of {name!r}: it has no ASCII letter or digit")
    return f"{core}-{binascii.crc32(name.encode('utf-8', 'surrogateescape')):08x}"


def kind_problem(kind: str) -> str | None:
    """Why ``kind`` cannot be a CDI kind (``vendor/class``), or None if every runtime takes it.

    The rules are the spec's (vendor a DNS subdomain, class at most 63 characters) and the CDI
    library's (each starts with a letter, ends with a letter or digit). One-character parts are
    refused too: the CDI library that Podman 4.3 uses crashes slicing them. A '.' in the class
    is valid but needs cdiVersion 0.6.0, which Podman 4.3 does not read (see min_version).
    """
    vendor, slash, cls = kind.partition("/")
    if not slash or not vendor or not cls:
        return "it must be vendor/class, e.g. smarter-devices.io/device"
    if len(vendor) < 2 or len(vendor) > VENDOR_MAX:
        return f"the vendor {vendor!r} must be 2 to {VENDOR_MAX} characters"
    if not all(_DNS_LABEL.match(label) and len(label) <= 63 for label in vendor.split(".")):
        return (f"the vendor {vendor!r} must be a DNS subdomain: lowercase letters, digits, "
                "'-' and '.'")
    if not vendor[0].isalpha():
        return f"the vendor {vendor!r} must start with a letter"
    if len(cls) < 2 or len(cls) > CLASS_MAX:
        return f"the class {cls!r} must be 2 to {CLASS_MAX} characters"
    if not cls.isascii() or not _CLASS.match(cls):
        return (f"the class {cls!r} must start with a letter, end with a letter or digit and "
                "hold only letters, digits and '_', '-', '.'")
    return None


def qualified(kind: str, name: str) -> str:
    """The fully qualified name the kubelet hands to the runtime: ``vendor/class=name``."""
    problem = kind_problem(kind)
    if problem:
        raise CdiError(f"invalid CDI kind {kind!r}: {problem}")
    problem = _name_problem(name)
    if problem:
        raise CdiError(f"invalid CDI device name {name!r}: {problem}")
    return f"{kind}={name}"


def spec_file_name(kind: str) -> str:
    """``smarter-devices.io/device`` -> ``smarter-devices.io-device.json``: one file per kind,
    named the way other CDI producers name theirs, so ``ls /var/run/cdi`` says who wrote it."""
    problem = kind_problem(kind)
    if problem:
        raise CdiError(f"invalid CDI kind {kind!r}: {problem}")
    return kind.replace("/", "-") + ".json"


def _node_edit(device: str, node: NodeEdit) -> dict[str, Any]:
    for label, path in (("container path", node.container_path), ("host path", node.host_path)):
        if not path.startswith("/"):
            raise CdiError(f"CDI device {device!r}: the {label} {path!r} of a node must be absolute")
    try:
        st = os.stat(node.local_path)
    except OSError as exc:
        raise CdiError(f"CDI device {device!r}: cannot stat {node.local_path}: "
                       f"{exc.strerror or exc}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise CdiError(f"CDI device {device!r}: {node.local_path} is not a character or block "
                       "device node")
    return {
        "path": node.container_path,
        "hostPath": node.host_path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "permissions": PERMISSIONS,
    }


def device_entry(device: CdiDevice) -> dict[str, Any]:
    """One device's entry in a spec; raises CdiError when no runtime would take it."""
    return _device_entry(device)


def _device_entry(device: CdiDevice) -> dict[str, Any]:
    problem = _name_problem(device.name)
    if problem:
        raise CdiError(f"invalid CDI device name {device.name!r}: {problem}")
    edits: dict[str, Any] = {}
    if device.env:
        for key, _ in device.env:
            if not key or "=" in key:
                raise CdiError(f"CDI device {device.name!r}: invalid environment variable name "
                               f"{key!r}")
        edits["env"] = [f"{key}={value}" for key, value in device.env]
    if device.nodes:
        edits["deviceNodes"] = [_node_edit(device.name, node) for node in device.nodes]
    if device.mounts:
        from smarter_device_manager.mountpolicy import host_problem

        for host, container in device.mounts:
            if not host.startswith("/") or not container.startswith("/"):
                raise CdiError(f"CDI device {device.name!r}: mount {host!r} -> {container!r} "
                               "needs absolute paths")
            problem = host_problem(host, missing_ok=True)  # a socket or FIFO never goes in
            if problem:
                raise CdiError(f"CDI device {device.name!r}: {problem}")
        edits["mounts"] = [
            {"hostPath": host, "containerPath": container, "options": list(READ_ONLY_BIND)}
            for host, container in device.mounts
        ]
    if not edits:
        # Runtimes reject a device without edits, and with it the whole file.
        raise CdiError(f"CDI device {device.name!r} has no device node, env or mount")
    return {"name": device.name, "containerEdits": edits}


def build_spec(kind: str, devices: Iterable[CdiDevice]) -> dict[str, Any]:
    """The spec for ``kind`` as a JSON-able dict, devices sorted by name.

    Raises CdiError for the first device no runtime would take (its node missing or not a
    device, a bad name or env, no edits), for duplicate names, for an invalid kind and for no
    devices at all (runtimes refuse an empty spec: remove the file instead). A caller that
    wants the other devices makes each entry with :func:`device_entry` and leaves out the
    ones that raise, then calls :func:`assemble`.
    """
    entries: dict[str, dict[str, Any]] = {}
    for device in devices:
        if device.name in entries:
            raise CdiError(f"CDI device {device.name!r} is defined twice in {kind}")
        entries[device.name] = _device_entry(device)
    return assemble(kind, entries)


def assemble(kind: str, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A spec of ready entries (by device name), with the lowest cdiVersion that holds them."""
    problem = kind_problem(kind)
    if problem:
        raise CdiError(f"invalid CDI kind {kind!r}: {problem}")
    if not entries:
        raise CdiError(f"a CDI spec for {kind} needs at least one device")
    spec: dict[str, Any] = {
        "cdiVersion": "",
        "kind": kind,
        "devices": [entries[name] for name in sorted(entries)],
    }
    spec["cdiVersion"] = min_version(spec)
    return spec


def _all_edits(spec: dict[str, Any]) -> list[dict[str, Any]]:
    edits = [spec.get("containerEdits") or {}]
    edits += [device.get("containerEdits") or {} for device in spec.get("devices") or ()]
    return edits


def _needs_1_1(spec: dict[str, Any]) -> bool:
    for edits in _all_edits(spec):
        rdt = edits.get("intelRdt") or {}
        if edits.get("netDevices") or rdt.get("schemata") or rdt.get("enableMonitoring"):
            return True
    return False


def _needs_0_7(spec: dict[str, Any]) -> bool:
    return any("intelRdt" in edits or edits.get("additionalGids") for edits in _all_edits(spec))


def _needs_0_6(spec: dict[str, Any]) -> bool:
    if spec.get("annotations") or any(d.get("annotations") for d in spec.get("devices") or ()):
        return True
    return "." in str(spec.get("kind", "")).partition("/")[2]


def _needs_0_5(spec: dict[str, Any]) -> bool:
    if any(str(d.get("name", ""))[:1].isdigit() for d in spec.get("devices") or ()):
        return True
    return any(node.get("hostPath") for edits in _all_edits(spec)
               for node in edits.get("deviceNodes") or ())


def _needs_0_4(spec: dict[str, Any]) -> bool:
    return any(mount.get("type") for edits in _all_edits(spec) for mount in edits.get("mounts") or ())


# Newest first, the way the spec's own table is read: the first rule that holds wins.
_REQUIREMENTS = (("1.1.0", _needs_1_1), ("0.7.0", _needs_0_7), ("0.6.0", _needs_0_6),
                 ("0.5.0", _needs_0_5), ("0.4.0", _needs_0_4))


def min_version(spec: dict[str, Any]) -> str:
    """The lowest cdiVersion whose runtimes know every field ``spec`` uses.

    From the spec's table of released versions: 0.4.0 mount ``type``; 0.5.0 ``hostPath`` on
    device nodes and device names starting with a digit; 0.6.0 ``annotations`` and a '.' in the
    class; 0.7.0 ``intelRdt`` and ``additionalGids``; 1.1.0 ``netDevices`` and intelRdt's
    ``schemata``/``enableMonitoring``. Runtimes refuse a spec below this, and older runtimes
    refuse one above what they know, so this exact value is what gets written.
    """
    for version, needs in _REQUIREMENTS:
        if needs(spec):
            return version
    return VERSIONS[0]


def _encode(spec: dict[str, Any]) -> bytes:
    # Compact: json's C encoder only runs without indent, and a 1,000-device spec then encodes
    # in a few ms instead of 150 (the daemon rewrites it after hotplug). `cdi` prints it indented.
    return (json.dumps(spec, separators=(",", ":")) + "\n").encode()


def write_spec(cdi_dir: str, file_name: str, spec: dict[str, Any]) -> bool:
    """Write ``spec`` to ``cdi_dir/file_name`` atomically; False if it already held exactly that.

    Temp file in the same directory (so rename stays within one filesystem), fsync, rename over
    the old file, fsync the directory: a runtime reading at any moment gets a whole spec, and a
    crash leaves the old or the new one. Unchanged content is not rewritten, so a burst of
    hotplug events does not wake every runtime's watcher. Raises OSError when the directory is
    missing or not writable; the caller decides whether to create it.
    """
    if not file_name or os.sep in file_name or file_name in (".", ".."):
        raise ValueError(f"not a plain file name: {file_name!r}")
    data = _encode(spec)
    path = os.path.join(cdi_dir, file_name)
    if _read_regular(path, len(data) + 1) == data:
        return False
    # Hidden and not ending in .json/.yaml: CDI caches watching the directory skip it.
    tmp = os.path.join(cdi_dir, f".{file_name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits the runtimes need
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(cdi_dir)
    return True


def _fsync_dir(path: str) -> None:
    """Make the rename itself durable; some filesystems refuse fsync on a directory: fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_spec(cdi_dir: str, file_name: str) -> dict[str, Any] | None:
    """The spec in the file, or None when it is missing, unreadable or not a JSON object:
    anything that is not what we wrote counts as tampered and is written again."""
    data = _read_regular(os.path.join(cdi_dir, file_name), SPEC_MAX)
    if data is None:
        return None
    try:
        loaded = json.loads(data)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _read_regular(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``path`` if it is a regular file; None for anything else.

    The CDI directory is shared with the runtime and whoever else can write it: a FIFO put at
    our file's name would block a plain open() forever (the daemon, ``dra`` and ``cdi --write``
    would hang), a device node could be read without end, and a symlink could point anywhere.
    So the open does not follow a symlink nor wait for a writer, and only a regular file is
    read; whatever else is there counts as "not our spec" and is replaced by the rename.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def remove_spec(cdi_dir: str, file_name: str) -> bool:
    """Delete the spec file; False when there was none (already what we want)."""
    try:
        os.unlink(os.path.join(cdi_dir, file_name))
    except FileNotFoundError:
        return False
    return True
