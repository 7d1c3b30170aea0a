"""The watcher: inotify on the dev root, the config directory and the plugin dir.

It is the only place events enter the daemon. It does no work of its own: it
classifies raw inotify events and tells a ``Sink`` what kind of thing changed;
the reconcile loop decides what to do (and coalesces bursts). Nothing polls:
an idle node costs no CPU.

Subdirectories of the dev root get a watch as soon as they appear, before any
rescan runs, so a node created inside a brand-new directory is either seen by
the rescan walk or raises an event of its own. A queue overflow is reported as
such and answered with a full resync, never ignored.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Protocol

from smarter_device_manager import inotify as ino

log = logging.getLogger(__name__)

_DIR_EVENTS = ino.IN_CREATE | ino.IN_DELETE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO
_SELF_EVENTS = ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
DEV_MASK = _DIR_EVENTS | _SELF_EVENTS | ino.IN_ONLYDIR | ino.IN_DONT_FOLLOW | ino.IN_EXCL_UNLINK
CONFIG_MASK = _DIR_EVENTS | ino.IN_CLOSE_WRITE | ino.IN_ONLYDIR
PLUGIN_MASK = _DIR_EVENTS | _SELF_EVENTS | ino.IN_ONLYDIR
CDI_MASK = _DIR_EVENTS | ino.IN_CLOSE_WRITE | ino.IN_ONLYDIR
KUBELET_SOCKET = "kubelet.sock"  # in the plugin dir: the kubelet is up while it is there


class Sink(Protocol):
    def dev_changed(self) -> None: ...
    def cdi_changed(self) -> None: ...
    def config_changed(self) -> None: ...
    def kubelet_started(self) -> None: ...
    def kubelet_stopped(self) -> None: ...
    def socket_deleted(self, name: str) -> None: ...
    def overflow(self) -> None: ...


class Watcher:
    def __init__(self, sink: Sink, dev_dir: str, plugin_dir: str, config_dir: str | None,
                 cdi_spec: str | None = None) -> None:
        self._sink = sink
        self._dev_root = os.path.realpath(dev_dir)
        self._inotify = ino.Inotify()
        self._dev_watches: dict[int, str] = {}  # wd -> path relative to the dev root
        self._dev_wds: dict[str, int] = {}
        self._limit_reached = False
        self._plugin_wd = self._inotify.add_watch(plugin_dir, PLUGIN_MASK)
        self._config_wd = -1
        if config_dir is not None:
            try:
                self._config_wd = self._inotify.add_watch(config_dir, CONFIG_MASK)
            except OSError as exc:
                log.warning("not watching %s for config changes: %s", config_dir, exc.strerror)
        # Our CDI spec file: someone else writing or deleting it means it must be written again.
        self._cdi_wd = -1
        self._cdi_file = ""
        if cdi_spec is not None:
            cdi_dir, self._cdi_file = os.path.split(cdi_spec)
            try:
                self._cdi_wd = self._inotify.add_watch(cdi_dir, CDI_MASK)
            except OSError as exc:
                log.warning("not watching %s for changes to our CDI spec: %s", cdi_dir, exc.strerror)
        self._add_dev_tree("")
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)

    def close(self) -> None:
        if self._inotify.fd >= 0:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()

    def sync_dev_dirs(self, directories: tuple[str, ...]) -> None:
        """Watch exactly the directories the last walk saw (mends any missed event)."""
        for rel in directories:
            if rel not in self._dev_wds:
                self._add_dev_watch(rel)

    def _add_dev_tree(self, rel: str) -> None:
        """Watch ``rel`` and every directory below it (symlinks not followed)."""
        pending = [rel]
        while pending:
            current = pending.pop()
            if not self._add_dev_watch(current):
                continue
            try:
                with os.scandir(os.path.join(self._dev_root, current)) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(f"{current}/{entry.name}" if current else entry.name)
            except OSError:
                continue

    def _add_dev_watch(self, rel: str) -> bool:
        if rel in self._dev_wds:
            return True
        try:
            wd = self._inotify.add_watch(os.path.join(self._dev_root, rel), DEV_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # the per-user watch limit; said once, not per rescan
                if self._limit_reached:
                    return False
                self._limit_reached = True
                log.error("cannot watch /dev/%s: the inotify watch limit is reached; devices there "
                          "are seen only on rescans (SIGHUP, other events) until "
                          "fs.inotify.max_user_watches is raised", rel)
            elif rel == "" or exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # vanished again
                log.warning("cannot watch /dev/%s: %s", rel, exc.strerror)
            return False
        self._dev_watches[wd] = rel
        self._dev_wds[rel] = wd
        return True

    def _drop_dev_watch(self, wd: int) -> None:
        rel = self._dev_watches.pop(wd, None)
        if rel is not None and self._dev_wds.get(rel) == wd:
            del self._dev_wds[rel]

    def _on_readable(self) -> None:
        try:
            events = self._inotify.read()
        except OSError as exc:
            log.error("reading inotify events failed: %s; resyncing", exc)
            self._sink.overflow()
            return
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: ino.Event) -> None:
        if event.mask & ino.IN_Q_OVERFLOW:
            log.warning("inotify queue overflowed; doing a full rescan")
            self._sink.overflow()
            return
        if event.wd == self._plugin_wd:
            self._plugin_event(event)
        elif event.wd == self._config_wd:
            self._sink.config_changed()
        elif event.wd == self._cdi_wd:
            if event.name == self._cdi_file:
                self._sink.cdi_changed()
        elif event.wd in self._dev_watches:
            self._dev_event(event)

    def _dev_event(self, event: ino.Event) -> None:
        parent = self._dev_watches[event.wd]
        if event.mask & (ino.IN_IGNORED | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
            if event.mask & ino.IN_IGNORED:
                self._drop_dev_watch(event.wd)
            self._sink.dev_changed()
            return
        if event.mask & ino.IN_ISDIR and event.mask & (ino.IN_CREATE | ino.IN_MOVED_TO):
            self._add_dev_tree(f"{parent}/{event.name}" if parent else event.name)
        self._sink.dev_changed()

    def _plugin_event(self, event: ino.Event) -> None:
        if event.mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_IGNORED):
            log.error("the plugin directory was removed; the kubelet cannot reach us until it returns")
            self._sink.kubelet_stopped()
            return
        created = event.mask & (ino.IN_CREATE | ino.IN_MOVED_TO)
        if event.name == KUBELET_SOCKET:
            if created:
                self._sink.kubelet_started()
            else:
                self._sink.kubelet_stopped()
        elif not created:
            self._sink.socket_deleted(event.name)
