"""Evaluation shared by the processes of a run: each scores its share, every one gets all results.

Without this every DDP process scored the whole validation and test set. The trainer's processes
evaluate together inside `across(accelerator)`; the scoring loops (batches of rows, ranking users)
go through `shared_map`, so every task shards without knowing about processes. A unit goes to
process `i % N` (the length-sorted batches' cost spreads evenly) and the results are gathered back
into unit order: each unit is scored once, in the same batch as in one process, and the metrics are
computed from the same list on every process. Outside `across` (the CLI's eval, a server, user
code) it is a plain loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Share:
    """The processes evaluating together, and how many units this one has scored in this context."""

    process_index: int
    num_processes: int
    units: int = 0


_SHARE: ContextVar[Share | None] = ContextVar("recpeft_eval_share", default=None)


@contextlib.contextmanager
def across(state) -> Iterator[Share]:
    """Share the evaluations run inside among the processes of `state` (an Accelerator or PartialState);
    every process must enter it and run the same evaluations."""
    share = Share(state.process_index, state.num_processes)
    token = _SHARE.set(share)
    try:
        yield share
    finally:
        _SHARE.reset(token)


def chunks(units: Sequence[T], size: int) -> list[Sequence[T]]:
    """units in consecutive chunks of at most `size`, as many as a multiple of the processes evaluating
    together so that each gets the same number (9 users on 2 processes: 5 + 4, not 9 + 0; 48 users in
    chunks of 16: 4 x 12, not 32 + 16)."""
    share = _SHARE.get()
    processes = share.num_processes if share is not None else 1
    count = -(-len(units) // max(1, size))
    count = -(-count // processes) * processes
    size = max(1, -(-len(units) // max(1, count)))
    return [units[i:i + size] for i in range(0, len(units), size)]


def shared_map(fn: Callable[[T], Any], units: Sequence[T]) -> list[Any]:
    """[fn(u) for u in units], each unit computed by one process only inside `across`."""
    share = _SHARE.get()
    if share is None or share.num_processes == 1:
        if share is not None:
            share.units += len(units)
        return [fn(u) for u in units]
    from accelerate.utils import gather_object

    mine = [(i, fn(units[i])) for i in range(share.process_index, len(units), share.num_processes)]
    share.units += len(mine)
    out: list[Any] = [None] * len(units)
    for i, result in gather_object(mine):  # every process's (index, result) pairs: uneven shares, no padding
        out[i] = result
    return out
