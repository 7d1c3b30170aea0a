"""Discovery: dev root + sysfs + rules -> the resources this node should advertise.

One walk of the dev root, no I/O besides ``scandir``/``stat`` and sysfs reads,
no state: the same function serves ``list`` and every rescan of ``serve``, so
what ``list`` prints is what the daemon advertises. Symlinked directories are
never followed (no loops, no duplicates) and there is no depth limit.

Security lives here: only character and block device nodes inside the dev
root ever become something a container can be given. Everything else that a
rule matches is reported as a problem with the reason, and skipped.

Rules of the original's kind name a resource after the node's path. Rules that
select devices by what they are (``subsystem``/``attributes``), name them
(``name``), gather them (``pool``) or use the ``nvidia-gpu`` keyword read sysfs
through a fresh :class:`~smarter_device_manager.sysfs.Sysfs` per walk, so every
rescan sees current attributes; a config of plain rules reads no sysfs at all.
A pool is one resource whose members are the matching devices, each with a
stable identity (its serial, or its USB port) that becomes its device IDs, so
the kubelet's checkpoint stays true when the kernel renames the node. Devices
that share a serial get their serial and USB port (``0001-usb-1-1.3``), read
from each device alone; keeping an ID on its device across rescans while other
duplicates come and go is :mod:`~smarter_device_manager.pinning`'s job.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smarter_device_manager.naming import name_problem, sanitize
from smarter_device_manager.rules import Config, Rule

if TYPE_CHECKING:
    from smarter_device_manager.sysfs import Level, Sysfs

KIND_DEVICE = "device"
KIND_DIRECTORY = "directory"
KIND_SYMLINK = "symlink"
KIND_POOL = "pool"
KIND_NVIDIA = "nvidia-gpu"
# The original's -pass-device-specs: the nodes the NVIDIA runtime would otherwise add.
NVIDIA_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A node handed to the container: it appears at ``/dev/<path>`` (unless the
    rule gives a container path); ``source`` is the real node's path relative to
    the dev root (differs for symlinks)."""

    path: str
    source: str


@dataclass(frozen=True, slots=True)
class Member:
    """One device of a pool: ``identity`` is its stable ID stem (serial or port).

    ``base`` and ``located`` are the device's own identities (see
    :mod:`~smarter_device_manager.identity`): ``identity`` is one of them (or, for two
    devices sysfs cannot tell apart, ``located`` plus the node name); ``located`` tells
    physical devices apart. Empty means the same as ``identity``.
    """

    identity: str
    path: str
    nodes: tuple[DeviceNode, ...]
    base: str = ""
    located: str = ""

    @property
    def where(self) -> str:
        """The physical device: its serial and port (what pinning compares)."""
        return self.located or self.identity

    @property
    def own(self) -> str:
        """The identity read from the device alone (its serial when it has one)."""
        return self.base or self.identity


@dataclass(frozen=True, slots=True)
class Resource:
    """One advertised resource; ``name`` is the part after ``<prefix>/``.

    ``path`` is what the resource stands for: the node's path relative to the
    dev root, a pool's name, or a GPU's entry under ``<sys>/devices``.
    ``members`` is set for pools only; ``gpu`` for the nvidia-gpu keyword.
    """

    name: str
    path: str
    kind: str
    count: int
    rule: Rule
    nodes: tuple[DeviceNode, ...]
    members: tuple[Member, ...] = ()
    gpu: str = ""

    @property
    def where(self) -> str:
        """How logs name what the resource stands for."""
        if self.kind == KIND_POOL:
            return f"pool {self.path} ({len(self.members)} devices)"
        if self.kind == KIND_NVIDIA:
            return f"GPU {self.path}"
        return f"/dev/{self.path}"


@dataclass(frozen=True)
class Inventory:
    """What one walk found: resources by name, plus what was skipped and why."""

    resources: dict[str, Resource] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    directories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Found:
    """A device a rule selected, before names are checked and pools gathered."""

    name: str
    rel: str
    kind: str
    rule: Rule
    nodes: tuple[DeviceNode, ...]
    identity: str = ""
    located: str = ""


def _is_device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _describe(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a device node"


class _Walk:
    def __init__(self, dev_dir: str, config: Config, sys_dir: str | None = None) -> None:
        self.root = os.path.realpath(dev_dir)
        self.config = config
        self.problems: list[str] = []
        self.directories: list[str] = []
        self.found: list[_Found] = []
        self.sysfs: Sysfs | None = None
        if sys_dir is not None and config.needs_sysfs:
            from smarter_device_manager.sysfs import Sysfs

            self.sysfs = Sysfs(sys_dir)

    def run(self) -> None:
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            abs_dir = os.path.join(self.root, rel_dir) if rel_dir else self.root
            try:
                entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
            except OSError as exc:
                self.problems.append(f"cannot read /dev/{rel_dir}: {exc.strerror}")
                continue
            self.directories.append(rel_dir)
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    pending.append(rel)
                _Entry(self, entry, rel).select()

    def nodes_under(self, rel_dir: str) -> tuple[DeviceNode, ...]:
        """Device nodes anywhere below a matched directory (symlinks not followed)."""
        nodes: list[DeviceNode] = []
        pending = [rel_dir]
        while pending:
            current = pending.pop()
            try:
                entries = list(os.scandir(os.path.join(self.root, current)))
            except OSError as exc:
                self.problems.append(f"cannot read /dev/{current}: {exc.strerror}")
                continue
            for entry in entries:
                rel = f"{current}/{entry.name}"
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # vanished while listed: nothing to report
                        self.problems.append(f"skipped /dev/{rel}: cannot stat: {exc.strerror}")
                    continue
                if stat.S_ISDIR(mode):
                    pending.append(rel)
                elif _is_device(mode):
                    nodes.append(DeviceNode(rel, rel))
        return tuple(sorted(nodes, key=lambda n: n.path))

    def symlink_target(self, rel: str) -> tuple[str, os.stat_result] | None:
        """The symlink's device node relative to the root, if it is one inside it."""
        link = os.path.join(self.root, rel)
        try:
            st = os.stat(link)
        except OSError as exc:
            reason = "a symlink loop" if exc.errno == errno.ELOOP else f"a broken symlink ({exc.strerror})"
            self.problems.append(f"skipped /dev/{rel}: {reason}")
            return None
        real = os.path.realpath(link)
        if os.path.commonpath([real, self.root]) != self.root:
            self.problems.append(f"skipped /dev/{rel}: symlink leaves the dev directory (-> {real})")
            return None
        if not _is_device(st.st_mode):
            self.problems.append(
                f"skipped /dev/{rel}: symlink to {_describe(st.st_mode)}; only device nodes are exported"
            )
            return None
        return os.path.relpath(real, self.root), st

    def gpus(self, rule: Rule, pass_device_specs: bool) -> None:
        """The original's ``nvidia-gpu`` keyword: one resource per ``<sys>/devices/gpu.N``."""
        if self.sysfs is None:
            return
        nodes: tuple[DeviceNode, ...] = ()
        if pass_device_specs:
            nodes = tuple(DeviceNode(n, n) for n in NVIDIA_NODES
                          if _is_device(_lstat_mode(os.path.join(self.root, n))))
        for entry in self.sysfs.gpus():
            number = entry.partition(".")[2]
            self.found.append(_Found(f"nvidia-gpu{number}", entry, KIND_NVIDIA, rule, nodes,
                                     identity=number))


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


class _Entry:
    """One entry of the dev tree on its way through the rules (stat and sysfs read once)."""

    __slots__ = ("_chain", "_mode", "_stat", "entry", "rel", "target", "walk")

    def __init__(self, walk: _Walk, entry: os.DirEntry[str], rel: str) -> None:
        self.walk = walk
        self.entry = entry
        self.rel = rel
        self._mode: int | None = None
        self._stat: os.stat_result | None = None
        self.target: str | None = None  # a symlink's device node, relative to the dev root
        self._chain: tuple[Level, ...] | bool | None = False  # False: not read yet

    def mode(self) -> int | None:
        """lstat mode; None if it vanished or cannot be read (reported once)."""
        if self._mode is None:
            try:
                self._stat = self.entry.stat(follow_symlinks=False)
                self._mode = self._stat.st_mode
            except FileNotFoundError:
                self._mode = 0  # removed while we walked: the event it raised brings another scan
            except OSError as exc:
                self.walk.problems.append(f"skipped /dev/{self.rel}: cannot stat: {exc.strerror}")
                self._mode = 0
        return self._mode or None

    def chain(self) -> tuple[Level, ...] | None:
        """The device's sysfs chain (device first), or None if it has none we can read."""
        if self._chain is not False:
            return self._chain  # type: ignore[return-value]
        self._chain = None
        sysfs = self.walk.sysfs
        mode = self.mode()
        if sysfs is None or mode is None:
            return None
        st = self._stat
        if stat.S_ISLNK(mode):  # a path rule naming a symlink: what it points to
            found = self.walk.symlink_target(self.rel)
            if found is None:
                return None
            self.target, st = found
        elif not _is_device(mode):
            return None
        assert st is not None
        from smarter_device_manager.sysfs import SysfsError

        try:
            path = sysfs.device_dir(stat.S_ISBLK(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
            self._chain = sysfs.chain(path)
        except SysfsError as exc:
            self.walk.problems.append(f"/dev/{self.rel}: {exc}")
        return self._chain

    def select(self) -> None:
        """Find the first rule that selects this entry, and record what it makes of it."""
        matching: list[Rule] = []
        for rule in self.walk.config.rules:
            if not rule.matches(self.rel):
                continue
            if rule.regex is None:  # selected by what it is: device nodes only, not their symlinks
                mode = self.mode()
                if mode is None or not _is_device(mode):
                    continue
            if rule.subsystem is not None or rule.attributes:
                chain = self.chain()
                sysfs = self.walk.sysfs
                if chain is None or sysfs is None:
                    continue
                from smarter_device_manager.udevmatch import matches

                if not matches(sysfs, chain, rule.subsystem, rule.attributes):
                    continue
            matching.append(rule)
        if not matching:
            return
        if len(matching) > 1:
            first, *others = matching
            self.walk.problems.append(
                f"/dev/{self.rel} matches rule {first.index} ({_show(first)}) and also "
                + ", ".join(f"rule {r.index} ({_show(r)})" for r in others)
                + f"; rule {first.index} wins"
            )
        self._classify(matching[0])

    def _classify(self, rule: Rule) -> None:
        walk, rel = self.walk, self.rel
        mode = self.mode()
        if mode is None:
            return
        if _is_device(mode):
            self._add(rule, KIND_DEVICE, (DeviceNode(rel, rel),))
        elif stat.S_ISDIR(mode):
            if rule.needs_sysfs:
                walk.problems.append(f"skipped /dev/{rel}: a directory has no sysfs device; rule "
                                     f"{rule.index} selects device nodes")
                return
            nodes = walk.nodes_under(rel)
            if nodes:
                self._add(rule, KIND_DIRECTORY, nodes)
            else:
                walk.problems.append(f"skipped /dev/{rel}: directory holds no device nodes")
        elif stat.S_ISLNK(mode):
            if self.target is None:
                found = walk.symlink_target(rel)
                if found is None:
                    return
                self.target = found[0]
            self._add(rule, KIND_SYMLINK, (DeviceNode(rel, self.target),))
        else:
            walk.problems.append(
                f"skipped /dev/{rel}: {_describe(mode)}; only character and block devices are exported"
            )

    def _add(self, rule: Rule, kind: str, nodes: tuple[DeviceNode, ...]) -> None:
        walk, rel = self.walk, self.rel
        if rule.plain:
            walk.found.append(_Found(sanitize(rel), rel, kind, rule, nodes))
            return
        chain = self.chain() if walk.sysfs is not None else None
        name = rule.name or sanitize(rel)
        if rule.fields:
            from smarter_device_manager.udevmatch import lookup

            values = {}
            own = own_levels(walk.sysfs, chain) if chain is not None and walk.sysfs else None
            for key in rule.fields:
                value = lookup(walk.sysfs, own, key) if own is not None and walk.sysfs else None
                if value is None:
                    walk.problems.append(
                        f"not exported: /dev/{rel} (rule {rule.index}): name '{rule.name}' needs "
                        f"attribute '{key}', which the device and its parents lack"
                        + ("" if chain is not None else " (no sysfs entry for it)"))
                    return
                values[key] = sanitize(value)
            name = _render(name, values)
        identity = located = sanitize(rel)
        if rule.pool and chain is not None and walk.sysfs is not None:
            from smarter_device_manager.identity import identities

            both = identities(walk.sysfs, chain, rel)
            identity, located = both.base, both.located
        walk.found.append(_Found(name, rel, kind, rule, nodes, identity, located))


def own_levels(sysfs: Sysfs, chain: tuple[Level, ...]) -> tuple[Level, ...]:
    """The levels that describe the device itself: up to its USB device, not the hubs and
    host controller above it (an xHCI root hub has a ``serial``: a CH340 without one must
    not be named after its host controller)."""
    for number, level in enumerate(chain):
        if sysfs.attribute(level.path, "idVendor") is not None:
            return chain[:number + 1]
    return chain


def _render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def _show(rule: Rule) -> str:
    """A rule as logs name it: its pattern, or what it selects by."""
    if rule.pattern:
        return rule.pattern
    parts = ([f"subsystem={rule.subsystem}"] if rule.subsystem else []) + \
        [f"{k}={v}" for k, v in rule.attributes]
    return " ".join(parts)


# --- at Allocate time: the nodes as they are now, never leaving the dev dir ----------------
# Anything may have changed since the last scan: a node replaced by a regular file, or a
# directory on its path (or the matched directory itself) swapped for a symlink to somewhere
# else. So these walk from a descriptor of the dev dir one component at a time with
# O_NOFOLLOW, and look at the last component with lstat relative to its parent's
# descriptor: a symlink anywhere on the way is refused, never followed.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_inside(dev_dir: str, rel_dir: str) -> int:
    """A descriptor of ``<dev_dir>/<rel_dir>`` reached without following a symlink; an
    OSError names (``filename``) the part of ``rel_dir`` that could not be entered."""
    try:
        fd = os.open(dev_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, "") from None
    try:
        parts = rel_dir.split("/") if rel_dir else []
        for i, part in enumerate(parts):
            try:
                if part in ("", ".", ".."):
                    raise OSError(errno.EINVAL, "not a plain relative path")
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, "/".join(parts[:i + 1])) from None
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_inside(rel: str, exc: OSError) -> str:
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return (f"/dev/{rel} is no longer a directory inside the dev dir (a symlink or "
                "another file is in its place)")
    return f"/dev/{rel}: {exc.strerror}"


def node_problem(dev_dir: str, rel: str) -> str | None:
    """Why ``/dev/<rel>`` must not be handed to a container now, or None if it may be."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = _open_inside(dev_dir, parent)
    except OSError as exc:
        return _not_inside(exc.filename, exc)
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError as exc:
        gone = " (unplugged?)" if exc.errno == errno.ENOENT else ""
        return f"/dev/{rel}: {exc.strerror}{gone}"
    finally:
        os.close(fd)
    if not _is_device(mode):
        return f"/dev/{rel} is no longer a device node ({_describe(mode)})"
    return None


def directory_nodes(dev_dir: str, rel_dir: str) -> tuple[tuple[DeviceNode, ...], tuple[str, ...]]:
    """The device nodes below ``rel_dir`` right now, and what could not be looked at."""
    try:
        top = _open_inside(dev_dir, rel_dir)
    except OSError as exc:
        return (), (_not_inside(exc.filename, exc),)
    nodes: list[DeviceNode] = []
    problems: list[str] = []
    pending = [(rel_dir, top)]
    try:
        while pending:
            current, fd = pending.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        rel = f"{current}/{entry.name}"
                        try:
                            mode = entry.stat(follow_symlinks=False).st_mode
                            if stat.S_ISDIR(mode):
                                pending.append((rel, os.open(entry.name, _DIR_FLAGS, dir_fd=fd)))
                            elif _is_device(mode):
                                nodes.append(DeviceNode(rel, rel))
                        except FileNotFoundError:
                            continue  # removed since it was listed
                        except OSError as exc:
                            problems.append(_not_inside(rel, exc))
            except OSError as exc:
                problems.append(f"cannot read /dev/{current}: {exc.strerror}")
            finally:
                os.close(fd)
    finally:
        for _, fd in pending:
            os.close(fd)
    return tuple(sorted(nodes, key=lambda n: n.path)), tuple(problems)


def discover(dev_dir: str, config: Config, prefix: str, sys_dir: str | None = "/sys",
             pass_device_specs: bool = False) -> Inventory:
    """Walk ``dev_dir`` (and sysfs, where rules need it) and return the resources
    the rules select.

    Names the kubelet would reject, and devices that collide on one name without
    being a pool, are problems for those devices only; every other resource is
    still returned.
    """
    walk = _Walk(dev_dir, config, sys_dir)
    walk.run()
    for rule in config.rules:
        if rule.nvidia:
            walk.gpus(rule, pass_device_specs)
    unusable = _rules_with_missing_mounts(config, walk.problems)
    by_name: dict[str, list[_Found]] = {}
    for found in walk.found:
        if found.rule.index not in unusable:
            by_name.setdefault(found.name, []).append(found)
    resources: dict[str, Resource] = {}
    for name, candidates in sorted(by_name.items()):
        resource = _resource(name, candidates, prefix, walk.problems)
        if resource is not None:
            resources[name] = resource
    return Inventory(resources, tuple(walk.problems), tuple(sorted(walk.directories)))


def _rules_with_missing_mounts(config: Config, problems: list[str]) -> set[int]:
    """Rules whose mount sources are missing or refused (a socket, FIFO or device node, or a
    symlink out of the allowed trees: see mountpolicy): their devices are not exported (a
    container started without the files it was promised fails in confusing ways)."""
    from smarter_device_manager.mountpolicy import host_problem

    unusable: set[int] = set()
    for rule in config.rules:
        refused = [p for p in (host_problem(m.host_path) for m in rule.mounts) if p]
        if refused:
            unusable.add(rule.index)
            problems.append(f"rule {rule.index}: {'; '.join(refused)}; the rule's devices are not "
                            "exported until that is put right")
    return unusable


def _resource(name: str, candidates: list[_Found], prefix: str, problems: list[str]) -> Resource | None:
    first = candidates[0]
    rule = first.rule
    if any(c.rule is not rule for c in candidates) or (len(candidates) > 1 and not rule.pool):
        paths = ", ".join(sorted(_where(c) for c in candidates))
        hint = ("give the rule 'pool: true', or a name template such as '" + (rule.name or name)
                + "-{serial}'") if rule.name else "narrow the rules so only one of them matches"
        problems.append(f"not exported: {paths} all map to the resource name {prefix}/{name}; {hint}")
        return None
    problem = name_problem(name)
    if problem:
        problems.append(f"not exported: {_where(first)}: resource name {prefix}/{name} "
                        f"would be rejected by the kubelet: {problem}")
        return None
    if rule.nvidia:
        return Resource(name, first.rel, KIND_NVIDIA, rule.count, rule, first.nodes, gpu=first.identity)
    if not rule.pool:
        return Resource(name, first.rel, first.kind, rule.count, rule, first.nodes)
    return Resource(name, name, KIND_POOL, rule.count, rule, (),
                    _members(candidates, f"{prefix}/{name}", problems))


def _members(candidates: list[_Found], pool: str, problems: list[str]) -> tuple[Member, ...]:
    """A pool's members: a device whose serial no other member has is named by its serial, the
    others by serial and port (never by which of them came first: see identity.py)."""
    shared: dict[str, int] = {}
    for found in candidates:
        shared[found.identity] = shared.get(found.identity, 0) + 1
    members: dict[str, Member] = {}
    for found in sorted(candidates, key=lambda c: (c.identity, c.located, c.rel)):
        identity = found.identity if shared[found.identity] == 1 else found.located
        located = found.located
        if identity in members:  # two devices on one port with one serial: sysfs cannot tell them apart
            other = members[identity].path
            identity = located = f"{identity}-{sanitize(found.rel)}"
            problems.append(f"pool {pool}: /dev/{found.rel} has the same identity as /dev/{other} "
                            f"({found.located}); its device IDs use its node name ({identity}) and may "
                            "change when it is re-plugged")
        members[identity] = Member(identity, found.rel, found.nodes, found.identity, located)
    return tuple(sorted(members.values(), key=lambda m: m.identity))


def _where(found: _Found) -> str:
    return f"GPU {found.rel}" if found.kind == KIND_NVIDIA else f"/dev/{found.rel}"
