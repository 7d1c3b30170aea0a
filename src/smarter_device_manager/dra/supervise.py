"""Background tasks of DRA mode that cannot die silently.

DRA mode runs its work in asyncio tasks that live as long as the process (the rescan worker, the
publisher's writer and watch, the lock holder; the dra-classes controller's writer and two
mirrors). Each handles the faults it expects (API errors, lost connections) itself. Anything
else is a bug or a broken environment (seen on a real cluster: a ``LookupError`` from ssl/idna
in an image without the codec), and a task that raises it used to end quietly: nothing in the
log, ``/readyz`` 503 for ever without a reason, since a task's exception is only seen by whoever
awaits it, at shutdown.

So every such task runs under :class:`Supervisor`, as device-plugin mode's registrar treats a
bug (docs/decisions.md, "Registration order"), but retrying, since a DRA task that stops leaves
the node unserved rather than one resource pending:

* the exception is logged once at ERROR with its traceback (the same exception again, while it
  keeps coming back, is counted, not logged again);
* ``failures`` names the task and the exception, for ``/readyz``, until the task has run
  ``STABLE`` seconds after its restart without failing again;
* ``dra_internal_errors_total{task}`` counts every one;
* the task is started again after 0.5 s doubling to 30 s (x0.8-1.2 jitter), reset once it has
  run ``STABLE`` seconds; a fresh start (the task's own code) rebuilds what it needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from smarter_device_manager.metrics import Metrics

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE = 5.0
METRIC = "dra_internal_errors_total"
FAMILY = {METRIC: ("counter", "Unexpected exceptions (bugs) in background tasks, by task; each task "
                   "is started again with backoff.")}


def _jitter(delay: float) -> float:
    return delay * (0.8 + 0.4 * int.from_bytes(os.urandom(2), "big") / 65535)


class Supervisor:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.failures: dict[str, str] = {}  # task -> what failed, while it is not stable again
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, work: Callable[[], Awaitable[None]], once: bool = False) -> asyncio.Task[None]:
        """Run ``work()`` as task ``name``, again for as long as it fails; ``once``: a task that
        ends when done (else ending is a bug too, and it is started again)."""
        task = asyncio.create_task(self._keep(name, work, once), name=name)
        self.tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def reasons(self) -> list[str]:
        return [f"internal error in {name}: {what}" for name, what in sorted(self.failures.items())]

    async def _keep(self, name: str, work: Callable[[], Awaitable[None]], once: bool) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_START
        last = ""
        times = 0
        while True:
            started = loop.time()
            clear = loop.call_later(STABLE, self._stable, name) if name in self.failures else None
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: see the module docstring
                what = f"{type(exc).__name__}: {exc}"
                if loop.time() - started >= STABLE:
                    delay, last, times = BACKOFF_START, "", 0
                self.metrics.inc(METRIC, task=name)
                times += 1
                if what != last:
                    log.error("internal error in %s (a bug; please report it): %s; starting it again in "
                              "%.1fs", name, what, delay, exc_info=exc)
                last = what
                self.failures[name] = f"{what} ({times} times; started again with backoff)" \
                    if times > 1 else f"{what} (started again with backoff)"
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            finally:
                if clear is not None:
                    clear.cancel()
            if once:
                self.failures.pop(name, None)
                return
            log.error("%s ended; it should run as long as the daemon, starting it again", name)
            await asyncio.sleep(_jitter(delay))

    def _stable(self, name: str) -> None:
        if self.failures.pop(name, None) is not None:
            log.info("%s has run %gs since it was started again: recovered", name, STABLE)
