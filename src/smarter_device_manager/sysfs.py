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
  deep link here (one ``lstat`` per component, every time), so links are
  resolved by :meth:`Sysfs._resolve`, the same algorithm with a per-scan cache of
  directories already known to be real: ~10 us per device instead.
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
from fnmatch import fnmatchcase

MAX_ATTRIBUTE = 4096
"""The largest attribute value read. sysfs ``show`` output is at most one page;
anything larger is a binary attribute (firmware, config space), never a match."""

_MAX_HOPS = 40  # symlinks followed while resolving one path: the kernel's own limit
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_GLOB_CHARS = frozenset("*?[")
_UNREAD = "\0"  # cache sentinel: no attribute value can hold a NUL (names with one are refused)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
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

    __slots__ = ("_attributes", "_chains", "_devices", "_dirs", "_real", "_root", "_root_slash", "_upward")

    def __init__(self, root: str) -> None:
        # Resolved once: every containment check compares against the real root.
        self._root = os.path.realpath(root)
        self._root_slash = self._root.rstrip("/") + "/"
        self._real: dict[str, int] = {self._root: stat.S_IFDIR}  # real absolute path -> its st_mode
        self._dirs: dict[str, str] = {}  # path as given -> real path relative to the root
        self._devices: dict[tuple[bool, int, int], str] = {}
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
                prefix = full
                pending: list[str] = []
                while prefix != real and prefix not in known:
                    pending.append(prefix)
                    prefix = prefix[: prefix.rfind("/")]
                for candidate in reversed(pending):
                    mode = os.lstat(candidate).st_mode
                    if stat.S_ISLNK(mode):
                        link = candidate
                        break
                    known[candidate] = mode
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

    def device_dir(self, block: bool, major: int, minor: int) -> str:
        """Path (relative to root) of the device dir that <root>/dev/{char|block}/M:m points to. Raises
        SysfsError if the link is missing, broken, loops, leaves the root, or is not a directory."""
        key = (block, major, minor)
        cached = self._devices.get(key)
        if cached is not None:
            return cached
        kind = "block" if block else "char"
        link = f"{self._root_slash}dev/{kind}/{major}:{minor}"
        try:
            real = self._resolve(link)
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
        norm = os.path.normpath(path) if path else "."
        if "\0" in path or os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
            raise SysfsError(f"{path!r} is not a path inside the sysfs root {self._root}")
        where = f"{self._root_slash}{norm}"
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
        if not stat.S_ISDIR(self._real.get(where, 0)):
            raise SysfsError(f"{where} is not a device directory")
        levels = (self._level(rel), *self._above(rel))
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
            if self._is_device(directory):
                base = (self._level(directory), *base)
            self._upward[directory] = base
        return base

    def _is_device(self, rel: str) -> bool:
        try:
            os.lstat(f"{self._root_slash}{rel}/uevent")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise SysfsError(f"cannot read {self._root_slash}{rel}: {exc.strerror}") from None
        return True

    def _level(self, rel: str) -> Level:
        where = self._abs(rel)
        subsystem = self._link_name(where, "subsystem")
        driver = self._link_name(where, "driver")
        if subsystem is None and not os.path.isdir(where):
            # ENOENT from readlink means "no such link" or "no such device any more". Every device but
            # a few roots has a subsystem, so this costs nothing in the common case.
            raise SysfsError(f"{where} vanished while it was read (device unplugged?)")
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
        value = self._attributes.get(key, _UNREAD)
        if value is not _UNREAD:
            return value
        value = self._read(path, name)
        self._attributes[key] = value
        return value

    def _read(self, path: str, name: str) -> str | None:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            return None
        try:
            file = f"{self._abs(self._real_dir(path))}/{name}"
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

    def _value(self, level: Level, key: str) -> str | None:
        if key == "driver":
            return level.driver
        if key == "subsystem":
            return level.subsystem
        return self.attribute(level.path, key)

    def lookup(self, chain: tuple[Level, ...], name: str) -> str | None:
        """Value of `name` on the device itself or its nearest parent that has it (what a name template
        `{serial}` uses). `driver` and `subsystem` give the nearest level's driver/subsystem that is not
        None."""
        for level in chain:
            value = self._value(level, name)
            if value is not None:
                return value
        return None

    def matches(self, chain: tuple[Level, ...], subsystem: str | None,
                attributes: tuple[tuple[str, str], ...]) -> bool:
        """udev semantics: `subsystem` (a glob, or None = any) must match the device's own subsystem (udev
        SUBSYSTEM); every (key, glob) in `attributes` must match on the device itself or on ONE single
        parent together (udev ATTRS: all keys on the same level). Keys `driver` and `subsystem` inside
        `attributes` match that level's driver/subsystem (udev DRIVERS/SUBSYSTEMS). Globs as udev:
        fnmatch.fnmatchcase with `*`, `?`, `[...]`; exact strings match exactly. Empty attributes tuple:
        only the subsystem check. An empty chain (no device) matches nothing."""
        if not chain:
            return False
        if subsystem is not None:
            own = chain[0].subsystem
            if own is None or not _glob(own, subsystem):
                return False
        if not attributes:
            return True
        for level in chain:
            for key, pattern in attributes:
                value = self._value(level, key)
                if value is None or not _glob(value, pattern):
                    break
            else:
                return True
        return False

    def identity(self, chain: tuple[Level, ...], node_name: str) -> str:
        """A stable identity for the device, used as its device ID in pools: it must NOT change when the
        device is unplugged and comes back under another node name (ttyUSB0 -> ttyUSB1) or another devnum,
        and must differ between two adapters. Rule: find the nearest USB device on the chain (a level with
        `idVendor` and `idProduct`); if it has a non-empty `serial`, the base is that serial; otherwise the
        base is 'usb-' + the USB device dir's basename (e.g. 'usb-1-1.3', the physical port path, stable per
        port). If that USB device's `bNumInterfaces` is more than 1, append '-if' + the interface's
        `bInterfaceNumber` (the level just below the USB device on the chain). If the class device has an
        `index` attribute other than '0' (video4linux metadata nodes), append '-' + index. With no USB
        device on the chain (built-in UARTs, I2C, PCI): the node's own name (node_name with '/' -> '_';
        built-in devices do not re-enumerate). Finally map every character outside [A-Za-z0-9._-] to '_'.

        Two adapters that share a serial (vendors that ship "0001" on every unit) get the same identity:
        callers must treat duplicates as a problem, this method cannot see the other device."""
        for position, level in enumerate(chain):
            if (self.attribute(level.path, "idVendor") is None
                    or self.attribute(level.path, "idProduct") is None):
                continue
            serial = (self.attribute(level.path, "serial") or "").strip()
            ident = serial or "usb-" + level.path.rpartition("/")[2]
            if position > 0 and _count(self.attribute(level.path, "bNumInterfaces")) > 1:
                number = self.attribute(chain[position - 1].path, "bInterfaceNumber")
                if number:
                    ident += "-if" + number.strip()
            index = self.attribute(chain[0].path, "index")
            if index and index.strip() != "0":
                ident += "-" + index.strip()
            return _UNSAFE.sub("_", ident)
        return _UNSAFE.sub("_", node_name.replace("/", "_"))

    def gpus(self) -> list[str]:
        """The original's `nvidia-gpu` keyword: names of the top-level entries of <root>/devices whose name
        matches the regex `gpu.[0-9]*` (re.search, unanchored, as Go's regexp.MatchString), sorted. [] if
        <root>/devices is missing or unreadable."""
        try:
            names = os.listdir(self._root_slash + "devices")
        except OSError:
            return []
        return sorted(name for name in names if _GPU.search(name))


def _glob(value: str, pattern: str) -> bool:
    """udev's match: a glob if the pattern has glob characters, else plain equality (the common case,
    and the one that must not be surprised by fnmatch's translation)."""
    if _GLOB_CHARS.isdisjoint(pattern):
        return value == pattern
    return fnmatchcase(value, pattern)


def _count(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
