"""Coalescing: requests that can share one pass through the model, arriving within a short window, are
stacked into one batch, computed in the worker pool, and split back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

Compute = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class _Group:
    compute: Compute
    items: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Stacks items submitted under one key within ``window`` seconds (at most ``max_batch``) into one call of
    their ``compute(items) -> results`` run by ``run`` (off the event loop). A batch that fails is retried item
    by item, so that one bad request fails alone.

    >>> async def demo():
    ...     async def run(function, *args):
    ...         return function(*args)
    ...     batcher = Batcher(run, window=0.01, max_batch=8)
    ...     calls = []
    ...     def double(items):
    ...         calls.append(len(items))
    ...         return [2 * item for item in items]
    ...     results = await asyncio.gather(*(batcher.submit("x", item, double) for item in range(3)))
    ...     return results, calls
    >>> asyncio.run(demo())
    ([0, 2, 4], [3])
    """

    def __init__(self, run: Callable[..., Awaitable[Any]], window: float = 0.015, max_batch: int = 8):
        self.run = run
        self.window = window
        self.max_batch = max_batch
        self._groups: dict[Hashable, _Group] = {}
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, key: Hashable, item: Any, compute: Compute) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(compute)
        group.items.append((item, future))
        if len(group.items) >= self.max_batch:
            self._flush(key)
        elif group.timer is None:
            group.timer = loop.call_later(self.window, self._flush, key)
        return await future

    def _flush(self, key: Hashable) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._compute(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compute(self, group: _Group) -> None:
        items = [item for item, _ in group.items]
        try:
            results = await self.run(group.compute, items)
        except Exception as error:
            if len(items) == 1:
                _settle(group.items[0][1], error=error)
                return
            for item, future in group.items:
                try:
                    (result,) = await self.run(group.compute, [item])
                except Exception as alone:
                    _settle(future, error=alone)
                else:
                    _settle(future, result=result)
            return
        for (_, future), result in zip(group.items, results, strict=True):
            _settle(future, result=result)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
