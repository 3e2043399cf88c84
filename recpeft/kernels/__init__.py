"""Everything recpeft changes inside a loaded base model, installed by one call: `apply(model)`.

`recpeft.models.load.load_base` calls `apply` once on every freshly loaded base; nothing else swaps a
module class or sets a backend flag. It returns what it applied (also kept as `model.recpeft_kernels`),
one "name: what" line per patch:

- quantised: bitsandbytes' Linear8bitLt / Linear4bit become FrozenInt8Linear / FrozenNF4Linear
  (quantised.py): de-quantise + F.linear, keeping no layer input. Not optional, so the switch below
  leaves it on: it is the function every recpeft adapter on a quantised base was trained and scored
  through (bitsandbytes' own int8 inference path quantises activations too and scores differently),
  and on the CPU the 4-bit swap is also a correctness fix: bitsandbytes' eval-mode 4-bit kernel on
  CPUs with AVX512-BF16 repacks the weight for a fused bf16 kernel that crashed (issue 14).
- sdpa / liger-kernel (gpu.py, CUDA only): cuDNN's SDPA off (process-wide), liger-kernel's Triton
  RMSNorm, RoPE and SwiGLU on Llama models when it is installed.
- fused (fused.py): Llama RMSNorm and attention with hand-written RMSNorm and rotary backward passes,
  where liger-kernel did not replace them.
- last-position (last_position.py): the last Llama block, which inside `last_position(model)`
  computes the scored position only. The context narrows only a block installed here.

The switch. `apply(model, enabled=False)`, `load_base(..., kernels=False)`, or the environment variable
`RECPEFT_KERNELS=off` (also 0, false, no) turns the optional patches off, for debugging and for
comparing with stock transformers: the model then runs transformers' own modules, `last_position`
narrows nothing, and cuDNN attention is left as PyTorch has it (a base loaded earlier in the same
process with the kernels on may already have turned it off). Only the quantised swap stays, for the
reasons above. Padding to a multiple of 8 and the automatic batch size (gpu.py) are run settings, not
model patches, and are unaffected.

The guard. fused.py and last_position.py build on transformers internals (modeling_llama's classes,
its attention functions) imported in one place, _transformers.py. If a transformers release moves
them, `import recpeft` still works; `apply` installs neither patch, the model runs stock, and one
warning line says so.
"""

from __future__ import annotations

import logging
import os

ENV = "RECPEFT_KERNELS"
_OFF = {"0", "off", "false", "no"}
_log = logging.getLogger(__name__)
_warned = False


def is_enabled(enabled: bool | None = None) -> bool:
    """Whether the optional patches are on: `enabled` when given, else unless RECPEFT_KERNELS is off."""
    if enabled is not None:
        return enabled
    return os.environ.get(ENV, "").strip().lower() not in _OFF


def _on_cuda(model) -> bool:
    return any(p.device.type == "cuda" for p in model.parameters())


def _quantised(model) -> bool:
    """Whether bitsandbytes layers are present (checked by class module, so bitsandbytes is imported only then)."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def _count(model, classes: tuple[type, ...]) -> int:
    return sum(isinstance(m, classes) for m in model.modules())


def _warn_missing(reason: str) -> None:
    global _warned
    if not _warned:  # once per process, not once per loaded model
        _warned = True
        _log.warning("recpeft: transformers internals moved (%s); running the stock model without "
                     "recpeft's fused and last-position kernels", reason)


def apply(model, *, enabled: bool | None = None) -> list[str]:
    """Install recpeft's kernels on a freshly loaded base `model` (in place; parameters and state-dict
    keys unchanged). enabled: the switch above (None: on unless RECPEFT_KERNELS=off). Returns what was
    applied, one "name: what" line each, and keeps the list as `model.recpeft_kernels`."""
    from recpeft.kernels import _transformers

    applied: list[str] = []
    if _quantised(model):
        from recpeft.kernels.quantised import FrozenInt8Linear, FrozenNF4Linear, use_frozen

        use_frozen(model)  # de-quantise + F.linear, keeping no layer input (see quantised.py)
        n = _count(model, (FrozenInt8Linear, FrozenNF4Linear))
        if n:
            applied.append(f"quantised: {n} frozen bitsandbytes linears (de-quantise + F.linear)")
    if is_enabled(enabled):
        if _on_cuda(model):
            from recpeft.kernels.gpu import configure

            applied += configure(model)  # attention backend, liger-kernel when installed (see gpu.py)
        if not _transformers.available():
            _warn_missing(_transformers.MISSING)
        else:
            from recpeft.kernels.fused import FusedLlamaAttention, FusedRMSNorm, use_fused
            from recpeft.kernels.last_position import use_last_position

            if not any(a.startswith("liger") for a in applied):  # liger's Triton kernels replace these
                use_fused(model)  # RMSNorm and rotary with hand-written backward passes (Llama family)
                n = _count(model, (FusedRMSNorm, FusedLlamaAttention))
                if n:
                    applied.append(f"fused: {n} RMSNorm / attention modules with hand-written backward passes")
            if use_last_position(model):
                applied.append("last-position: the last decoder block computes the scored position only")
    model.recpeft_kernels = applied
    return applied
