"""`FairSlots`: the remote client's in-flight limit, in turn between calls, and never leaking a slot."""

from __future__ import annotations

import asyncio

from qwenguard.core.backends.fair_slots import CALLER, FairSlots


async def _hold(slots: FairSlots, caller: object, order: list[object], release: asyncio.Event) -> None:
    CALLER.set(caller)
    async with slots.slot():
        order.append(caller)
        await release.wait()


async def test_freed_slots_go_to_the_waiting_callers_in_turn():
    slots, order, go = FairSlots(1), [], asyncio.Event()
    go.set()
    first = asyncio.Event()
    holder = asyncio.ensure_future(_hold(slots, "a", order, first))
    await asyncio.sleep(0)
    many = [asyncio.ensure_future(_hold(slots, "a", order, go)) for _ in range(5)]
    await asyncio.sleep(0)
    one = asyncio.ensure_future(_hold(slots, "b", order, go))
    await asyncio.sleep(0)
    first.set()
    await asyncio.gather(holder, *many, one)
    assert order.index("b") <= 2  # after the holder and at most one more of a's, not after all of them


async def test_a_waiter_cancelled_or_cancelled_as_it_is_given_a_slot_leaks_none():
    slots, order, hold = FairSlots(2), [], asyncio.Event()
    holders = [asyncio.ensure_future(_hold(slots, i, order, hold)) for i in range(2)]
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(_hold(slots, "w", order, hold)) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # cancelled while waiting
    hold.set()
    await asyncio.sleep(0)
    waiting[1].cancel()  # may be cancelled just as it is given a slot
    await asyncio.gather(*holders, *waiting, return_exceptions=True)
    # Every slot is free again: as many holders as the limit get in at once.
    inside = 0

    async def count() -> None:
        nonlocal inside
        async with slots.slot():
            inside += 1
            await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(count(), count()), 1)
    assert inside == 2 and slots._free == 2 and not slots._waiting
