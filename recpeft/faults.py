"""Crash-test hook: RECPEFT_KILL_AT=<point> makes the process SIGKILL itself at that point.

Points: `step:N` (after optimiser step N, before its evaluation and checkpoint), `rename:NAME` (an
artefact folder NAME is fully written in its temp sibling, not yet renamed into place), `swap:NAME`
(the old NAME has been moved aside, the new one not yet renamed in). Used by the kill-and-resume and
kill-during-save tests; unset, it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal


def kill_point(point: str) -> None:
    """SIGKILL this process if RECPEFT_KILL_AT names `point` (a real, uncatchable kill)."""
    if os.environ.get("RECPEFT_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
