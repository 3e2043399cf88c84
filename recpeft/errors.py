"""One exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import difflib

ERROR_PREFIX = "recpeft: error: "  # how the CLI starts a user error's one line (launch.py reads it back)


def did_you_mean(word: str, options) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class UserError(Exception):
    """A problem with the user's input (flag, file, config, data), not a bug in recpeft.

    `where` is "file:line" (or just "file") when the problem has a location.
    """

    def __init__(self, message: str, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class Interrupted(Exception):
    """Ctrl-C stopped training; `checkpoint` is the folder saved at `step` (None if nothing was saved).
    `together`: every process of the run stopped at that step (the loop's stop), none was cut short."""

    def __init__(self, step: int, checkpoint: str | None, together: bool = False):
        self.step, self.checkpoint, self.together = step, checkpoint, together
        saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"interrupted at step {step}; {saved}")
