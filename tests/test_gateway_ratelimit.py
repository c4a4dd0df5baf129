"""The client-side send limit, on a fake clock: never more than ``limit`` requests start in any
window, a slot is held until ``window`` after its response, waiters keep their order, a 429
pause holds everyone."""

from __future__ import annotations

import anyio
import pytest

from langbot_bridge.gateway.ratelimit import SlidingWindowLimit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()


async def test_no_window_ever_holds_more_than_the_limit() -> None:
    clock = FakeClock()
    limit = SlidingWindowLimit(3, 60.0, clock=clock, sleep=clock.sleep)
    starts: list[tuple[int, float]] = []

    async def request(n: int, took: float) -> None:
        async with limit.slot():
            starts.append((n, clock.now))
            clock.now += took  # the request's own duration

    for n in range(10):
        await request(n, took=1.0)
    times = [t for _, t in starts]
    for i in range(len(times) - 3):
        assert times[i + 3] >= times[i] + 60.0 + 1.0  # a slot frees a window after its response
    assert [n for n, _ in starts] == list(range(10))
    assert limit.waited > 0


async def test_waiters_are_served_in_order_and_a_pause_holds_everyone() -> None:
    clock = FakeClock()
    limit = SlidingWindowLimit(2, 10.0, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def request(n: int) -> None:
        async with limit.slot():
            order.append(n)

    limit.pause(30.0)
    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(request, n)
            await anyio.lowlevel.checkpoint()
    assert order == list(range(6))
    assert clock.now >= 30.0 + 2 * 10.0


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimit(0, 60)
    with pytest.raises(ValueError):
        SlidingWindowLimit(60, 0)
