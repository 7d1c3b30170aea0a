"""Rules that select devices "by what they are", matched as udev matches them.

A rule's ``subsystem`` and ``attributes`` are globs checked against a device's chain of sysfs
levels (the device, its interface, its USB device, its hub...), the way a udev rule's
``SUBSYSTEM`` and ``ATTRS``/``DRIVERS``/``SUBSYSTEMS`` keys are, so a rule written after
``udevadm info -a`` (or ``smarter-device-manager list --all``) selects what udev would. Name
templates (``{serial}``) take the value of the nearest level that has it. The reading is
:class:`~smarter_device_manager.sysfs.Sysfs`'s; this module only decides.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from smarter_device_manager.sysfs import Level, Sysfs

_GLOB_CHARS = frozenset("*?[")


def lookup(sysfs: Sysfs, chain: tuple[Level, ...], name: str) -> str | None:
    """Value of `name` on the device itself or its nearest parent that has it (what a name template
    `{serial}` uses). `driver` and `subsystem` give the nearest level's driver/subsystem that is not
    None."""
    for level in chain:
        value = sysfs.value(level, name)
        if value is not None:
            return value
    return None


def matches(sysfs: Sysfs, chain: tuple[Level, ...], subsystem: str | None,
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
            value = sysfs.value(level, key)
            if value is None or not _glob(value, pattern):
                break
        else:
            return True
    return False


def _glob(value: str, pattern: str) -> bool:
    """udev's match: a glob if the pattern has glob characters, else plain equality (the common case,
    and the one that must not be surprised by fnmatch's translation)."""
    if _GLOB_CHARS.isdisjoint(pattern):
        return value == pattern
    return fnmatchcase(value, pattern)
