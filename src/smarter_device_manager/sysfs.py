"""sysfs: from a device node's major:minor to what the device is.

Rules that select devices "by what they are" (vendor, product, serial, driver)
need the same facts udev uses: ``<root>/dev/{char,block}/M:m`` links to the
device's directory, whose parents (interface, USB device, hub, controller) each
have a ``subsystem`` and maybe a ``driver`` symlink and plain attribute files.
This module reads them and nothing else: no policy, no rules, no logging.

Why it is shaped so:

- One :class:`Sysfs` object per rescan caches every read. Fresh values on every
  rescan, and a hub shared by hundreds of adapters is read once per scan.
- The sysfs root is injectable, so tests build fake trees and the daemon can read
  a host's ``/sys`` mounted elsewhere.
- Nothing is followed out of the root. ``os.path.realpath`` costs ~110 us per
  deep link here (one ``lstat`` per component, every time, ~25 of them), so
  links are resolved by :meth:`Sysfs._resolve`, the same algorithm with a
  per-scan cache of paths already known to be real: a new adapter behind a known
  hub costs one ``readlink`` and ~5 ``lstat`` calls, ~20 us.
- A bad tree (loops, dangling or escaping links, a device unplugged mid-read)
  is a :class:`SysfsError` with a message for users for the device that has it;
  a single unreadable attribute is just absent (``None``), as it is for udev.
- Only cheap stdlib imports: this runs on 512 MiB Raspberry Pis.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

MAX_ATTRIBUTE = 4096
"""The largest attribute value read. sysfs ``show`` output is at most one page;
anything larger is a binary attribute (firmware, config space), never a match."""

_MAX_HOPS = 40  # symlinks followed while resolving one path: the kernel's own limit
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_GPU = re.compile(r"gpu.[0-9]*")  # the original's pattern, unanchored like Go's regexp.MatchString


class SysfsError(Exception):
    """A problem reading sysfs for one device, with a message written for users
    (what is missing/unreadable/looping and where). Callers skip that device and report the message."""


@dataclass(frozen=True, slots=True)
class Level:
    """One device on the chain from a device up to (not including) <root>/devices, like one block of
    `udevadm info -a`. Directories without a ``uevent`` file (``tty``, ``virtual``, ``mem``...) are
    grouping directories, not devices, and are skipped as udev skips them."""

    path: str
    subsystem: str | None
    driver: str | None


class Sysfs:
    """Reads of one sysfs tree, cached for the life of the object: the daemon makes a new one per rescan,
    so every rescan reads fresh values, and a device's parents (a hub shared by many adapters) are read once
    per scan."""

    __slots__ = ("_abs_dirs", "_attributes", "_chains", "_devices", "_dirs", "_real", "_real_folders",
                 "_root", "_root_slash", "_upward")

    def __init__(self, root: str) -> None:
        # Resolved once: every containment check compares against the real root.
        self._root = os.path.realpath(root)
        self._root_slash = self._root.rstrip("/") + "/"
        self._real: dict[str, int] = {self._root: stat.S_IFDIR}  # real absolute path -> its st_mode
        self._dirs: dict[str, str] = {}  # path as given -> real path relative to the root
        self._abs_dirs: dict[str, str] = {}  # path as given -> real absolute path
        self._devices: dict[tuple[bool, int, int], str] = {}
        self._real_folders: dict[str, str] = {}  # <root>/dev/char and /block -> their real paths
        self._chains: dict[str, tuple[Level, ...]] = {}
        self._upward: dict[str, tuple[Level, ...]] = {}  # real dir -> its levels and those above
        self._attributes: dict[tuple[str, str], str | None] = {}

    @property
    def root(self) -> str:
        """The real path of the sysfs root (symlinks resolved)."""
        return self._root

    def _abs(self, rel: str) -> str:
        return self._root_slash + rel if rel else self._root

    def _inside(self, real: str) -> bool:
        # Equivalent to os.path.commonpath([real, root]) == root for the normalised absolute paths
        # _resolve returns, at a fraction of the cost.
        return real == self._root or real.startswith(self._root_slash)

    def _resolve(self, path: str) -> str:
        """The real absolute path of absolute ``path``, like ``os.path.realpath(path, strict=True)``.

        Raises OSError (ENOENT, ENOTDIR, ELOOP, EACCES...) as the kernel would. Paths already found
        real in this scan are not looked at again: once the remaining components are plain names, only
        those below the longest known prefix are ``lstat``-ed. That is what makes 1,000 devices behind
        one hub cheap (a device's link resolves with ~6 ``lstat`` calls instead of ~25). Links are
        only read, never opened, so following one outside the root to find out where it ends is
        harmless; callers check containment of the result.
        """
        known = self._real
        todo = [name for name in reversed(path.split("/")) if name and name != "."]
        real = ""  # "" stands for "/"
        hops = 0
        while todo:
            link = ""
            if ".." not in todo:
                full = real + "/" + "/".join(reversed(todo))
                link = self._first_link(full, real)
                if not link:
                    return full
                rest = full[len(link) + 1 :]
                todo = rest.split("/")[::-1] if rest else []
            else:
                name = todo.pop()
                if name == "..":
                    real = real[: real.rfind("/")] if real else ""
                    continue
                candidate = f"{real}/{name}"
                if candidate not in known:
                    mode = os.lstat(candidate).st_mode
                    if stat.S_ISLNK(mode):
                        link = candidate
                    else:
                        known[candidate] = mode
                if not link:
                    real = candidate
                    continue
            hops += 1
            if hops > _MAX_HOPS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(link)
            real = "" if target.startswith("/") else link[: link.rfind("/")]
            todo.extend(name for name in reversed(target.split("/")) if name and name != ".")
        return real or "/"

    def _short_way(self, folder: str, target: str) -> str | None:
        """``target`` resolved from the real directory ``folder`` when it is leading ``../`` and then
        plain names: only the names below the longest prefix already known real are ``lstat``-ed.
        None when it is not that simple (a symlink on the way, ``.``, ``//``...): use _resolve."""
        base = self._real_folders.get(folder)
        if base is None:
            base = self._real_folders[folder] = self._resolve(folder)
        rest = target
        while rest.startswith("../"):
            rest = rest[3:]
            base = base[: base.rfind("/")]
        if not rest or rest[0] == "/" or "//" in rest or "/./" in f"/{rest}/" or "/../" in f"/{rest}/":
            return None
        full = f"{base}/{rest}"
        return None if self._first_link(full, base) else full

    def _first_link(self, full: str, base: str) -> str:
        """The first symlink on ``full`` below the real directory ``base``, or "" if none.

        Only the components below the longest prefix already known real are ``lstat``-ed (and
        remembered as real); raises OSError as ``lstat`` does."""
        known = self._real
        prefix = full
        pending: list[str] = []
        while prefix != base and prefix not in known:
            pending.append(prefix)
            prefix = prefix[: prefix.rfind("/")]
        for candidate in reversed(pending):
            mode = os.lstat(candidate).st_mode
            if stat.S_ISLNK(mode):
                return candidate
            known[candidate] = mode
        return ""

    def device_dir(self, block: bool, major: int, minor: int) -> str:
        """Path (relative to root) of the device dir that <root>/dev/{char|block}/M:m points to. Raises
        SysfsError if the link is missing, broken, loops, leaves the root, or is not a directory."""
        key = (block, major, minor)
        cached = self._devices.get(key)
        if cached is not None:
            return cached
        kind = "block" if block else "char"
        folder = f"{self._root_slash}dev/{kind}"
        link = f"{folder}/{major}:{minor}"
        try:
            try:
                # The link read directly, its target resolved from the link's folder as the kernel
                # does. The kernel's own links ("../../devices/...") take the short way.
                target = os.readlink(link)
                real = self._short_way(folder, target) or self._resolve(
                    target if target.startswith("/") else f"{folder}/{target}")
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                real = self._resolve(link)  # not a symlink: resolved as it is (and then refused)
        except OSError as exc:
            if not os.path.lexists(link):
                raise SysfsError(
                    f"{link} does not exist: sysfs knows no {kind} device {major}:{minor}") from None
            raise SysfsError(self._link_problem(link, exc)) from None
        except ValueError:  # a NUL byte in a link target: not a tree the kernel makes
            raise SysfsError(f"{link} has an invalid target") from None
        if not self._inside(real):
            raise SysfsError(f"{link} points outside {self._root} (to {real}); not followed")
        rel = real[len(self._root_slash) :] if real != self._root else ""
        if not rel.startswith("devices/"):
            raise SysfsError(f"{link} points to {real}, which is not under {self._root_slash}devices")
        if not stat.S_ISDIR(self._real.get(real, 0)):
            raise SysfsError(f"{link} points to {real}, which is not a directory")
        self._devices[key] = rel
        self._dirs[rel] = rel
        return rel

    @staticmethod
    def _link_problem(link: str, exc: OSError) -> str:
        if exc.errno == errno.ELOOP:
            return f"{link} is a symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            try:
                target = os.readlink(link)
            except OSError:
                target = "?"
            return f"{link} is a broken link (to {target}): {exc.strerror}"
        return f"cannot resolve {link}: {exc.strerror}"

    def _real_dir(self, path: str) -> str:
        """The real path (relative to the root) of a directory given relative to the root."""
        known = self._dirs.get(path)
        if known is not None:
            return known
        # A lexical check for paths that plainly climb out; the real check is on the resolved path,
        # resolved as the kernel would ("link/.." is the link target's parent, not ".").
        norm = os.path.normpath(path) if path else "."
        if "\0" in path or os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
            raise SysfsError(f"{path!r} is not a path inside the sysfs root {self._root}")
        where = f"{self._root_slash}{path}".rstrip("/")
        try:
            real = self._resolve(where)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise SysfsError(f"{where} does not exist (device unplugged?)") from None
            if exc.errno == errno.ELOOP:
                raise SysfsError(f"{where} is a symlink loop") from None
            raise SysfsError(f"cannot resolve {where}: {exc.strerror}") from None
        except ValueError:
            raise SysfsError(f"{path!r} is not a valid path") from None
        if not self._inside(real):
            raise SysfsError(f"{where} leads outside {self._root} (to {real}); not followed")
        rel = real[len(self._root_slash) :] if real != self._root else ""
        self._dirs[path] = rel
        return rel

    def chain(self, path: str) -> tuple[Level, ...]:
        """The device at `path` and its parents, nearest first, stopping below <root>/devices. Cached by
        path. `path` may lead through symlinks inside the root (``class/tty/ttyS0``); levels hold real
        paths. Raises SysfsError if `path` is missing (unplugged since device_dir()), not a directory, or
        leads out of the root."""
        cached = self._chains.get(path)
        if cached is not None:
            return cached
        rel = self._real_dir(path)
        where = self._abs(rel)
        if not rel:
            raise SysfsError(f"{where} is the sysfs root, not a device")
        # The mode _resolve saw; a device dir removed since is caught by _level.
        mode = self._real.get(where)
        if mode is None:
            try:
                mode = os.lstat(where).st_mode
            except OSError as exc:
                raise SysfsError(f"{where} vanished (device unplugged?): {exc.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise SysfsError(f"{where} is not a device directory")
        leaf = self._level(rel, leaf=True)
        assert leaf is not None  # a leaf always has a level
        levels = (leaf, *self._above(rel))
        self._chains[path] = levels
        return levels

    def _above(self, rel: str) -> tuple[Level, ...]:
        """The device levels strictly above ``rel``, nearest first; iterative, so any depth is fine."""
        pending: list[str] = []
        base: tuple[Level, ...] = ()
        parent = rel.rpartition("/")[0]
        while parent and parent != "devices":
            hit = self._upward.get(parent)
            if hit is not None:
                base = hit
                break
            pending.append(parent)
            parent = parent.rpartition("/")[0]
        for directory in reversed(pending):
            level = self._level(directory, leaf=False)
            if level is not None:
                base = (level, *base)
            self._upward[directory] = base
        return base

    def _level(self, rel: str, leaf: bool) -> Level | None:
        """The level of directory ``rel``; for a parent (not ``leaf``), None if it is no device.

        A device is a directory with a ``uevent`` file, as for udev; grouping directories (``tty``,
        ``video4linux``) have none. A ``subsystem`` link implies a device, so ``uevent`` is only
        looked for when there is no subsystem: one syscall saved per parent.
        """
        where = self._abs(rel)
        subsystem = self._link_name(where, "subsystem")
        if subsystem is None:
            try:
                os.lstat(f"{where}/uevent")
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise SysfsError(f"cannot read {where}: {exc.strerror}") from None
                if not leaf:
                    return None  # a grouping directory (or a parent gone with its child: caught below)
                # ENOENT from readlink and lstat: no such file, or no such device any more.
                if not os.path.isdir(where):
                    raise SysfsError(f"{where} vanished while it was read (device unplugged?)") from None
        driver = self._link_name(where, "driver")
        self._dirs[rel] = rel
        return Level(rel, subsystem, driver)

    @staticmethod
    def _link_name(where: str, name: str) -> str | None:
        """Basename of the ``name`` symlink in ``where`` (never followed); None if there is none."""
        try:
            target = os.readlink(f"{where}/{name}")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENOTDIR):
                return None
            raise SysfsError(f"cannot read {where}/{name}: {exc.strerror}") from None
        return target.rstrip("/").rpartition("/")[2] or None

    def attribute(self, path: str, name: str) -> str | None:
        """The attribute file's value with trailing whitespace/newline stripped; None if missing, a
        directory, a symlink, unreadable (EACCES/EIO/etc.), not UTF-8, larger than 4096 bytes, or vanished
        mid-read. Cached."""
        key = (path, name)
        if key in self._attributes:
            return self._attributes[key]
        value = self._read(path, name)
        self._attributes[key] = value
        return value

    def _read(self, path: str, name: str) -> str | None:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            return None
        try:
            where = self._abs_dirs.get(path)
            if where is None:
                where = self._abs_dirs[path] = self._abs(self._real_dir(path))
            file = f"{where}/{name}"
            # lstat first: never open a FIFO, a device node or a symlink that a bad tree put here.
            if not stat.S_ISREG(os.lstat(file).st_mode):
                return None
            fd = os.open(file, _OPEN_FLAGS)
            try:
                # One bounded read: a short read of a regular file is its end, and sysfs hands over a
                # whole ``show`` output (at most a page) in one read. 4097 bytes tells "too big" apart.
                data = os.read(fd, MAX_ATTRIBUTE + 1)
            finally:
                os.close(fd)
            if len(data) > MAX_ATTRIBUTE:
                return None
            return data.decode("utf-8").rstrip()
        except (OSError, ValueError, SysfsError):  # ValueError: not UTF-8, or a name unfit for the OS
            return None

    def attributes(self, path: str) -> dict[str, str]:
        """Every readable single-value attribute file of that device dir (for `list`, like udevadm info -a):
        regular files only, not `uevent`, values as attribute() gives; sorted by name. {} if the dir is
        gone or outside the root."""
        try:
            where = self._abs(self._real_dir(path))
            with os.scandir(where) as entries:
                names = [e.name for e in entries if e.name != "uevent" and e.is_file(follow_symlinks=False)]
        except (OSError, SysfsError):
            return {}
        found: dict[str, str] = {}
        for name in sorted(names):
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # a name that is not UTF-8 cannot be printed or matched
                continue
            value = self.attribute(path, name)
            if value is not None:
                found[name] = value
        return found

    def value(self, level: Level, key: str) -> str | None:
        """What a rule key means on one level: its driver, its subsystem, or an attribute."""
        if key == "driver":
            return level.driver
        if key == "subsystem":
            return level.subsystem
        return self.attribute(level.path, key)

    def gpus(self) -> list[str]:
        """The original's `nvidia-gpu` keyword: names of the top-level entries of <root>/devices whose name
        matches the regex `gpu.[0-9]*` (re.search, unanchored, as Go's regexp.MatchString), sorted. [] if
        <root>/devices is missing or unreadable."""
        try:
            names = os.listdir(self._root_slash + "devices")
        except OSError:
            return []
        return sorted(name for name in names if _GPU.search(name))
