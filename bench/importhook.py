"""What each module of a process costs: resident memory and import time, module by module.

Loaded into the daemon by ``bench/imports.py`` before anything else (``python -c``), it wraps
every loader's ``exec_module`` and reads the process's resident set (``/proc/self/statm``) and
the clock around it. A module's *self* figures are its own total minus the totals of the modules
it imported while it ran, so the figures of all modules add up to what the imports cost. On exit
(SIGTERM included: the daemon exits normally) it writes them as JSON to ``$SDM_IMPORTS_OUT``,
with the process's RSS after the imports and at the end.

A measuring tool, not part of the daemon: RSS is counted in pages, so a module under a page
(4 KiB) can show 0 and the next one the page; sums over a package are what to read.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

TYPE_CHECKING = False  # not typing's: the hook imports nothing the interpreter has not loaded
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
_STATM = os.open("/proc/self/statm", os.O_RDONLY)
_records: dict[str, list[Any]] = {}  # name -> [self kB, self ms, total kB, total ms, order, importer]
_stack: list[list[Any]] = []  # per running import: [children kB, children ms, module name]
_start_rss: list[int] = []


def rss_kb() -> int:
    return int(os.pread(_STATM, 64, 0).split()[1]) * _PAGE // 1024


class _Timed:
    """Wraps a loader: measures its ``exec_module``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        importer = _stack[-1][2] if _stack else ""
        _stack.append([0.0, 0.0, module.__name__])
        kb0, t0 = rss_kb(), time.perf_counter()
        try:
            self.inner.exec_module(module)
        finally:
            kb, ms = rss_kb() - kb0, (time.perf_counter() - t0) * 1000
            child_kb, child_ms, _ = _stack.pop()
            if _stack:
                _stack[-1][0] += kb
                _stack[-1][1] += ms
            _records[module.__name__] = [kb - child_kb, ms - child_ms, kb, ms, len(_records),
                                       importer]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Finder:
    """A meta-path finder in front of the others: their spec, with the loader wrapped."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is _Finder:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Timed(spec.loader)
                return spec  # type: ignore[no-any-return]
        return None


def _dump() -> None:
    out = os.environ.get("SDM_IMPORTS_OUT")
    if not out:
        return
    import json  # only now: the hook must not load modules the daemon would not

    with open(out, "w", encoding="utf-8") as f:
        json.dump({"start_kb": _start_rss[0], "end_kb": rss_kb(), "modules": _records,
                   "preloaded": sorted(sys.modules.keys() - _records.keys())}, f)


def install() -> None:
    _start_rss.append(rss_kb())
    sys.meta_path.insert(0, _Finder)
    atexit.register(_dump)
