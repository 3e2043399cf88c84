"""Test driver: the recpeft CLI with crash, Ctrl-C and weight-dump behaviour on production's hook points.

    python tests/_hooks.py [--kill-at POINT] [--kill-signal KILL|INT] [--kill-rank R]
                           [--kill-target self|command] [--dump-rank-weights DIR] -- train ...

Everything after `--` (or after the hook options: `--` is optional) is a `recpeft` command line.
POINT is one of
  step:N       after optimiser step N, before its evaluation and checkpoint (events "step")
  rename:NAME  an artefact folder NAME is fully written in its temporary sibling, not yet renamed into
               place (events "folder_written")
  swap:NAME    the old NAME has been moved aside, the new one not yet renamed in ("folder_swapped")
The process SIGKILLs itself there (a real, uncatchable kill); --kill-signal INT sends a Ctrl-C instead.
With several processes, --kill-rank R limits it to rank R, and --kill-target command signals the
process group of the command the user ran instead, as a terminal's Ctrl-C does. --dump-rank-weights DIR:
every process writes its final trainable weights to DIR/rank<R>.safetensors, to compare them exactly.
The workers of `train --num-processes N` run through this driver too, with the same hooks
(recpeft.training.launch.WORKER).

In a test's own process: `with hooks(kill_at="step:4", kill_signal="INT"): train(...)`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

POINTS = {"step": "step", "rename": "folder_written", "swap": "folder_swapped"}


def _signal(name: str, target: str) -> None:
    sig = getattr(signal, "SIG" + name)
    if target != "command":
        os.kill(os.getpid(), sig)
        return
    import psutil

    command = psutil.Process()
    if "WORLD_SIZE" in os.environ:  # a worker: its parent is the launcher, whose parent is the command
        command = command.parent().parent()
    os.killpg(os.getpgid(command.pid), sig)
    time.sleep(1)  # the signal comes back to this process through the command; then the step ends


def install(kill_at: str | None = None, kill_signal: str = "KILL", kill_rank: int | None = None,
            kill_target: str = "self", dump_rank_weights: str | None = None):
    """Register the behaviour on recpeft's hook points; returns a function that removes it."""
    from recpeft.training import events

    offs = []
    if kill_at:
        kind, _, where = kill_at.partition(":")
        if kind not in POINTS or not where:
            raise SystemExit(f"--kill-at: step:N, rename:NAME or swap:NAME, not {kill_at!r}")

        def kill(step: int | None = None, name: str | None = None, rank: int | None = None, **_) -> None:
            rank = int(os.environ.get("RANK", 0)) if rank is None else rank  # folder events carry no rank
            here = str(step) if kind == "step" else name
            if here == where and kill_rank in (None, rank):
                _signal(kill_signal, kill_target)

        offs.append(events.on(POINTS[kind], kill))
    if dump_rank_weights:

        def dump(model, rank: int, **_) -> None:
            from safetensors.torch import save_file

            weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(weights, str(Path(dump_rank_weights) / f"rank{rank}.safetensors"))

        offs.append(events.on("trained", dump))
    return lambda: [off() for off in offs]


@contextlib.contextmanager
def hooks(**options):
    """install(**options) for the duration of a with-block."""
    off = install(**options)
    try:
        yield
    finally:
        off()


OPTIONS = ("--kill-at", "--kill-signal", "--kill-rank", "--kill-target", "--dump-rank-weights")  # one value each


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tests/_hooks.py", description=__doc__.split("\n")[0])
    p.add_argument("--kill-at")
    p.add_argument("--kill-signal", default="KILL", choices=["KILL", "INT", "TERM"])
    p.add_argument("--kill-rank", type=int)
    p.add_argument("--kill-target", default="self", choices=["self", "command"])
    p.add_argument("--dump-rank-weights")
    return p


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(hook options, recpeft command line). The options come first, a value each; a `--` after them is
    optional, because torchrun drops it from a worker's command line."""
    i = 0
    while i < len(argv) and argv[i] in OPTIONS:
        i += 2
    return argv[:i], argv[i + 1:] if argv[i:i + 1] == ["--"] else argv[i:]


def command(*cli: str, **options) -> list[str]:
    """The command line running `recpeft *cli` through this driver with these options (install's names)."""
    flags = [a for k, v in options.items() if v is not None for a in (f"--{k.replace('_', '-')}", str(v))]
    return [sys.executable, str(Path(__file__).resolve()), *flags, "--", *cli]


def main(argv: list[str]) -> None:
    own, cli = split(argv)
    install(**vars(parser().parse_args(own)))
    from recpeft.training import launch

    launch.WORKER = [str(Path(__file__).resolve()), *own]  # workers: this driver, the same hooks
    sys.argv = ["recpeft", *cli]
    from recpeft.cli.app import main as recpeft_main

    recpeft_main()


if __name__ == "__main__":
    main(sys.argv[1:])
