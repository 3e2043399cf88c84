"""Library messages that say nothing to a recpeft user, dropped by exact text; everything else still shows.

recpeft's contract is one clean line on stderr for a user error. Two libraries print on every run:
- bitsandbytes 0.50, on a CPU with AVX512-BF16, tries at import to fetch a fused 4-bit CPU kernel from
  the `kernels` hub package and logs "Failed to load CPU gemm_4bit_forward from kernels-community" when
  it cannot (always, here: no hub). recpeft never runs that kernel (recpeft.kernels.quantised computes 4-bit
  layers on the CPU itself), so the message is noise.
- peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias inside `PeftModel`, and
  transformers 5 warns (FutureWarning) on every adapter attached or loaded. recpeft itself calls
  neither alias; the warning is peft's to fix, so only that message is filtered.

Both filters match one message each, on the logger or warning category that emits it: any other
warning or error of these libraries (a real failure to load, a CUDA problem) still reaches stderr.
Installed once when `recpeft` is imported, before peft or bitsandbytes are.
"""

from __future__ import annotations

import logging
import warnings

# logger name -> message prefixes dropped from that logger (its own records only, not its children's)
DROPPED_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}
DROPPED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def install() -> None:
    """Add the filters (idempotent)."""
    for name, prefixes in DROPPED_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    for message, category in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
