"""SmallEvent behaves as asyncio.Event (it only keeps its waiters in a smaller list)."""

from __future__ import annotations

import asyncio
import collections
import sys

from aiorun import run

from smarter_device_manager.lowmem import SmallEvent, SmallList


def test_small_event_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    async def scenario() -> None:
        event = SmallEvent()
        waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()
        await asyncio.sleep(0)
        assert len(event._waiters) == 2
        event.set()
        assert [await w for w in waiters[1:]] == [True, True]
        assert waiters[0].cancelled()
        assert await asyncio.wait_for(event.wait(), 1)  # set: returns at once
        event.clear()
        assert not event.is_set()
    run(scenario())


def test_small_list_answers_what_asyncio_asks_of_a_deque() -> None:
    # asyncio.Event uses append, remove, iteration, popleft (3.11-3.13): SmallList has them all
    small = SmallList([1, 2])
    small.appendleft(0)
    assert small.popleft() == 0 and list(small) == [1, 2]
    assert sys.getsizeof(SmallList()) < sys.getsizeof(collections.deque()) / 5
