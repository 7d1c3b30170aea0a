"""Discovery: dev root + rules -> the resources this node should advertise.

One walk of the dev root, no I/O besides ``scandir``/``stat``, no state: the
same function serves ``list`` and every rescan of ``serve``, so what ``list``
prints is what the daemon advertises. Symlinked directories are never followed
(no loops, no duplicates) and there is no depth limit.

Security lives here: only character and block device nodes inside the dev
root ever become something a container can be given. Everything else that a
rule matches is reported as a problem with the reason, and skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from smarter_device_manager.config import Config, Rule
from smarter_device_manager.naming import name_problem, sanitize

KIND_DEVICE = "device"
KIND_DIRECTORY = "directory"
KIND_SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A node handed to the container: it appears at ``/dev/<path>``; ``source``
    is the real node's path relative to the dev root (differs for symlinks)."""

    path: str
    source: str


@dataclass(frozen=True, slots=True)
class Resource:
    """One advertised resource; ``name`` is the part after ``<prefix>/``."""

    name: str
    path: str
    kind: str
    count: int
    rule: int
    nodes: tuple[DeviceNode, ...]


@dataclass(frozen=True)
class Inventory:
    """What one walk found: resources by name, plus what was skipped and why."""

    resources: dict[str, Resource] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    directories: tuple[str, ...] = ()


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
    def __init__(self, dev_dir: str, config: Config) -> None:
        self.root = os.path.realpath(dev_dir)
        self.config = config
        self.problems: list[str] = []
        self.directories: list[str] = []
        self.found: list[Resource] = []

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
                rule = self._match(rel)
                if rule is not None:
                    self._classify(entry, rel, rule)

    def _match(self, rel: str) -> Rule | None:
        matching = [rule for rule in self.config.rules if rule.matches(rel)]
        if len(matching) > 1:
            first, *others = matching
            self.problems.append(
                f"/dev/{rel} matches rule {first.index} ({first.pattern}) and also "
                + ", ".join(f"rule {r.index} ({r.pattern})" for r in others)
                + f"; rule {first.index} wins"
            )
        return matching[0] if matching else None

    def _classify(self, entry: os.DirEntry[str], rel: str, rule: Rule) -> None:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except FileNotFoundError:
            return  # removed while we walked: the event it raised brings another scan
        except OSError as exc:
            self.problems.append(f"skipped /dev/{rel}: cannot stat: {exc.strerror}")
            return
        if _is_device(mode):
            self._add(rel, KIND_DEVICE, rule, (DeviceNode(rel, rel),))
        elif stat.S_ISDIR(mode):
            nodes = self._nodes_under(rel)
            if nodes:
                self._add(rel, KIND_DIRECTORY, rule, nodes)
            else:
                self.problems.append(f"skipped /dev/{rel}: directory holds no device nodes")
        elif stat.S_ISLNK(mode):
            target = self._symlink_target(rel)
            if target is not None:
                self._add(rel, KIND_SYMLINK, rule, (DeviceNode(rel, target),))
        else:
            self.problems.append(
                f"skipped /dev/{rel}: {_describe(mode)}; only character and block devices are exported"
            )

    def _nodes_under(self, rel_dir: str) -> tuple[DeviceNode, ...]:
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
                except OSError:
                    continue
                if stat.S_ISDIR(mode):
                    pending.append(rel)
                elif _is_device(mode):
                    nodes.append(DeviceNode(rel, rel))
        return tuple(sorted(nodes, key=lambda n: n.path))

    def _symlink_target(self, rel: str) -> str | None:
        """The symlink's device node relative to the root, if it is one inside it."""
        link = os.path.join(self.root, rel)
        try:
            mode = os.stat(link).st_mode
        except OSError as exc:
            reason = "a symlink loop" if exc.errno == errno.ELOOP else f"a broken symlink ({exc.strerror})"
            self.problems.append(f"skipped /dev/{rel}: {reason}")
            return None
        real = os.path.realpath(link)
        if os.path.commonpath([real, self.root]) != self.root:
            self.problems.append(f"skipped /dev/{rel}: symlink leaves the dev directory (-> {real})")
            return None
        if not _is_device(mode):
            self.problems.append(
                f"skipped /dev/{rel}: symlink to {_describe(mode)}; only device nodes are exported"
            )
            return None
        return os.path.relpath(real, self.root)

    def _add(self, rel: str, kind: str, rule: Rule, nodes: tuple[DeviceNode, ...]) -> None:
        self.found.append(Resource(sanitize(rel), rel, kind, rule.count, rule.index, nodes))


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
        return f"/dev/{rel}: {exc.strerror}"
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


def discover(dev_dir: str, config: Config, prefix: str) -> Inventory:
    """Walk ``dev_dir`` and return the resources the rules select.

    Names the kubelet would reject, and paths that collide on one name, are
    problems for those devices only; every other resource is still returned.
    """
    walk = _Walk(dev_dir, config)
    walk.run()
    by_name: dict[str, list[Resource]] = {}
    for resource in walk.found:
        by_name.setdefault(resource.name, []).append(resource)
    resources: dict[str, Resource] = {}
    for name, candidates in sorted(by_name.items()):
        if len(candidates) > 1:
            paths = ", ".join(sorted(f"/dev/{c.path}" for c in candidates))
            walk.problems.append(
                f"not exported: {paths} all map to the resource name {prefix}/{name}; "
                "narrow the rules so only one of them matches"
            )
            continue
        problem = name_problem(name)
        if problem:
            walk.problems.append(
                f"not exported: /dev/{candidates[0].path}: resource name {prefix}/{name} "
                f"would be rejected by the kubelet: {problem}"
            )
            continue
        resources[name] = candidates[0]
    return Inventory(resources, tuple(walk.problems), tuple(sorted(walk.directories)))
