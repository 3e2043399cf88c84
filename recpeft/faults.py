"""Crash-test hook: RECPEFT_KILL_AT=<point> makes the process SIGKILL itself at that point.

Points: `step:N` (after optimiser step N, before its evaluation and checkpoint), `rename:NAME` (an
artefact folder NAME is fully written in its temp sibling, not yet renamed into place), `swap:NAME`
(the old NAME has been moved aside, the new one not yet renamed in). RECPEFT_KILL_SIGNAL=INT sends
SIGINT (a Ctrl-C) instead. Used by the kill-and-resume, Ctrl-C and kill-during-save tests; unset, it
costs one environment lookup.
"""

from __future__ import annotations

import os
import signal


def kill_point(point: str) -> None:
    """Signal this process (SIGKILL: a real, uncatchable kill) if RECPEFT_KILL_AT names `point`."""
    if os.environ.get("RECPEFT_KILL_AT") == point:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("RECPEFT_KILL_SIGNAL", "KILL")))
