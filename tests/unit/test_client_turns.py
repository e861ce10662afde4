"""`ClientTurns`: per-address turns, handed over in order, never lost by a waiter that gives up."""

from __future__ import annotations

import asyncio

import pytest
from qwenguard.core.server.turns import ClientTurns, QueueFull, TurnTimeout


def run(coro):
    return asyncio.run(coro)


def test_an_address_holds_at_most_its_turns_and_others_do_not_wait():
    async def main():
        turns = ClientTurns(2)
        order: list[str] = []
        release = asyncio.Event()

        async def hold(client: str, name: str) -> None:
            async with turns.turn(client):
                order.append(name)
                await release.wait()

        tasks = [asyncio.create_task(hold("a", f"a{i}")) for i in range(3)] + [asyncio.create_task(hold("b", "b0"))]
        await asyncio.sleep(0.01)
        assert sorted(order) == ["a0", "a1", "b0"] and turns.waiting("a") == 1 and turns.held("a") == 2
        release.set()
        await asyncio.gather(*tasks)
        assert order[-1] == "a2" and turns.held("a") == 0 and turns.waiting("a") == 0

    run(main())


def test_waiters_are_served_in_order():
    async def main():
        turns = ClientTurns(1)
        order: list[int] = []

        async def one(i: int) -> None:
            async with turns.turn("a"):
                order.append(i)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(one(i) for i in range(6)))
        assert order == list(range(6))

    run(main())


def test_a_waiter_past_its_timeout_gives_up_and_leaves_no_trace():
    async def main():
        turns = ClientTurns(1)
        async with turns.turn("a"):
            with pytest.raises(TurnTimeout):
                async with turns.turn("a", timeout=0.02):
                    raise AssertionError("no turn was free")
            assert turns.waiting("a") == 0 and turns.held("a") == 1
        assert turns.held("a") == 0
        async with turns.turn("a", timeout=0.02):  # the turn is free again
            pass

    run(main())


def test_a_turn_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on():
    """The holder leaves and hands its turn to the first waiter just as that waiter is cancelled (a client
    hanging up): the turn must go to the next waiter, not vanish (which would shrink the address's turns)."""

    async def main():
        turns = ClientTurns(1)
        served: list[str] = []
        first = turns.turn("a")
        await first.__aenter__()

        async def wait(name: str) -> None:
            async with turns.turn("a"):
                served.append(name)

        doomed = asyncio.create_task(wait("doomed"))
        nxt = asyncio.create_task(wait("next"))
        await asyncio.sleep(0.01)
        await first.__aexit__(None, None, None)  # hands the turn to "doomed"...
        doomed.cancel()  # ...which is cancelled before it runs
        await asyncio.wait({doomed, nxt}, timeout=2)  # a lost turn leaves "next" waiting for ever
        assert served == ["next"] and turns.held("a") == 0 and turns.waiting("a") == 0

    run(main())


def test_past_max_waiting_a_request_is_refused_at_once():
    async def main():
        turns = ClientTurns(1, max_waiting=1)
        async with turns.turn("a"):
            waiter = asyncio.create_task(turns.turn("a").__aenter__())
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                async with turns.turn("a"):
                    pass
            async with turns.turn("b"):  # another address is not affected
                pass
        await waiter  # the waiter got the turn when the holder left
        assert turns.held("a") == 1 and turns.waiting("a") == 0

    run(main())


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        ClientTurns(0)


def test_parse_turns_go_round_the_clients_that_wait():
    """`ParseTurns` (a second red team on the one-at-a-time parse, rt44c F3): a single first-come queue made one
    client's large request wait behind every queued request of another (4 s behind 60 attackers). Clients take
    turns: a client with one request waits behind at most one of each other client's."""
    from qwenguard.core.server.turns import ParseTurns

    async def main() -> list[str]:
        turns = ParseTurns()
        order: list[str] = []

        async def work(client: str, name: str) -> None:
            async with turns.turn(client):
                order.append(name)
                await asyncio.sleep(0.001)

        tasks = [asyncio.create_task(work("attacker", f"x{i}")) for i in range(20)]
        await asyncio.sleep(0)  # the attacker's requests are all queued first
        tasks.append(asyncio.create_task(work("user", "u")))
        await asyncio.gather(*tasks)
        return order

    order = run(main())
    assert order.index("u") <= 2, order
    assert sorted(order) == sorted([f"x{i}" for i in range(20)] + ["u"])


def test_a_parse_turn_not_given_in_time_is_refused():
    from qwenguard.core.server.turns import ParseTurns

    async def main() -> None:
        turns = ParseTurns()
        release = asyncio.Event()

        async def hold() -> None:
            async with turns.turn("a"):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        queued = asyncio.create_task(hold())  # the same client's second request: waits in its own line
        await asyncio.sleep(0)
        with pytest.raises(TurnTimeout):
            async with turns.turn("a", timeout=0.01):
                pass
        release.set()
        await asyncio.gather(holder, queued)

    run(main())
