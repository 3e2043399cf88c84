"""Crash-test hook: RECPEFT_KILL_AT=<point> makes the process SIGKILL itself at that point.

Points: `step:N` (after optimiser step N, before its evaluation and checkpoint), `rename:NAME` (an
artefact folder NAME is fully written in its temp sibling, not yet renamed into place), `swap:NAME`
(the old NAME has been moved aside, the new one not yet renamed in). RECPEFT_KILL_SIGNAL=INT sends
SIGINT (a Ctrl-C) instead. Several processes: RECPEFT_KILL_RANK=R limits it to rank R, and
RECPEFT_KILL_TARGET=command signals the process group of the `recpeft` command the user ran instead,
as a terminal's Ctrl-C does. Used by the kill-and-resume, Ctrl-C and kill-during-save tests; unset, it
costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time


def kill_point(point: str) -> None:
    """Signal this process (SIGKILL: a real, uncatchable kill) if RECPEFT_KILL_AT names `point`."""
    if os.environ.get("RECPEFT_KILL_AT") != point:
        return
    rank = os.environ.get("RANK", "0")
    if os.environ.get("RECPEFT_KILL_RANK", rank) != rank:
        return
    sig = getattr(signal, "SIG" + os.environ.get("RECPEFT_KILL_SIGNAL", "KILL"))
    if os.environ.get("RECPEFT_KILL_TARGET") != "command":
        os.kill(os.getpid(), sig)
        return
    import psutil

    command = psutil.Process()
    if "WORLD_SIZE" in os.environ:  # a worker: its parent is the launcher, whose parent is the command
        command = command.parent().parent()
    os.killpg(os.getpgid(command.pid), sig)
    time.sleep(1)  # the signal comes back to this process through the command; then the step ends
