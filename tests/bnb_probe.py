"""Force bitsandbytes' CPU feature probe `has_avx512bf16()` to an answer, whatever this CPU has.

bitsandbytes decides at import (backends/cpu/ops.py, nn/modules.py) which CPU code to use from that
probe. `force(value)` must run in a fresh process before bitsandbytes is imported: it patches the probe
the moment `bitsandbytes.functional` has executed, so every module that imports the name afterwards
(the CPU backend, Linear4bit) gets the forced answer. Used by tests/test_cpu_branches.py through
`python_forcing(value, code)`, which runs `code` in such a process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


class _ForceProbe(importlib.abc.MetaPathFinder):
    def __init__(self, value: bool):
        self.value = value

    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run, value = spec.loader.exec_module, self.value

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: value

        spec.loader.exec_module = exec_module
        return spec


def force(value: bool) -> None:
    if "bitsandbytes" in sys.modules:
        raise RuntimeError("bitsandbytes is already imported: force the probe in a fresh process")
    sys.meta_path.insert(0, _ForceProbe(value))


def python_forcing(value: bool, code: str) -> list[str]:
    """argv for `python -c` that forces the probe to `value`, then runs `code`."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import bnb_probe; bnb_probe.force({value!r})\n"
    return [sys.executable, "-c", prelude + code]
