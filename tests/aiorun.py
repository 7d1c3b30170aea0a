"""Run a test's asyncio scenario so that it can never hang the suite.

``asyncio.run`` bounds nothing: the scenario may wait for ever, and after it, closing the loop
cancels the tasks left over and waits for each of them, for ever if one ignores its cancellation
(a handler that catches it and awaits again). Under load that turned a passing test into a CI
run that never ended. ``run`` bounds both, and a leftover task that will not end fails the test
with its name and stack instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

LEFTOVER_GRACE = 15.0


def run(coro: Coroutine[Any, Any, None], timeout: float = 120) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        try:
            stuck = _cancel_leftovers(loop)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    assert not stuck, "tasks that ignored their cancellation:\n" + "\n".join(stuck)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> list[str]:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=LEFTOVER_GRACE))
    stuck = []
    for task in pending:
        frames = task.get_stack(limit=8)
        where = "; ".join(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                          for f in frames)
        stuck.append(f"{task.get_name()}: {task.get_coro()!r} at {where}")
    return stuck
