"""Named points that production code announces, for tests and benchmarks to hook into.

`fire(point, **info)` calls the functions registered with `on(point, fn)`, in order; with none registered
it costs a dict lookup. Nothing in recpeft registers any: tests/_hooks.py (crash and Ctrl-C tests) and
the benchmarks in experiments/ do. Points:

  step            after optimiser step `step` (info: step, rank), outside the step's timing, before
                  its evaluation, logging and checkpoint
  folder_written  an artefact folder `name` is complete in its temporary sibling, not yet renamed in
                  (artifacts.write_dir_atomic; info: name, path)
  folder_swapped  the previous `name` has been moved aside, the new one not yet renamed in (info: name)
  trained         training is over, the best weights restored (info: model, the unwrapped peft
                  model; rank); every process fires it
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

POINTS = ("step", "folder_written", "folder_swapped", "trained")

_hooks: dict[str, list[Callable[..., None]]] = {}


def on(name: str, fn: Callable[..., None]) -> Callable[[], None]:
    """Call fn(**info) whenever `name` fires; returns a function that unregisters it."""
    if name not in POINTS:
        raise ValueError(f"unknown hook point {name!r}; one of {', '.join(POINTS)}")
    _hooks.setdefault(name, []).append(fn)

    def off() -> None:
        with contextlib.suppress(ValueError):
            _hooks[name].remove(fn)

    return off


@contextlib.contextmanager
def hooked(name: str, fn: Callable[..., None]) -> Iterator[None]:
    """on(name, fn) for the duration of a with-block."""
    off = on(name, fn)
    try:
        yield
    finally:
        off()


def fire(point: str, /, **info) -> None:
    """Announce that `point` is reached (info may hold a `name` of its own: the point is positional)."""
    for fn in _hooks.get(point, ()):
        fn(**info)
