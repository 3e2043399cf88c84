"""transformers' private names the kernels build on, imported in this one place.

fused.py and last_position.py subclass and call internals of `transformers.models.llama.modeling_llama`
and `transformers.integrations.sdpa_attention`, which are not public API and may move in any release.
If one of them cannot be imported, `MISSING` says why and the names below are inert stand-ins: a
class no real module is an instance of, and functions that raise. `recpeft.kernels.apply` then
installs none of these patches (the model runs stock transformers code) and says so in one warning
line, instead of `import recpeft` failing with an ImportError.
"""

from __future__ import annotations

import torch

MISSING: str | None = None  # why the private imports failed; None when they all resolved

try:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaDecoderLayer,
        LlamaRMSNorm,
        eager_attention_forward,
        rotate_half,
    )
except ImportError as exc:  # a transformers release moved or renamed one of them
    MISSING = f"{type(exc).__name__}: {exc}"

    class _Unavailable(torch.nn.Module):
        """Stands in for a class transformers no longer has: no loaded module is one, so no swap matches."""

    class LlamaRMSNorm(_Unavailable):  # type: ignore[no-redef]
        pass

    class LlamaAttention(_Unavailable):  # type: ignore[no-redef]
        pass

    class LlamaDecoderLayer(_Unavailable):  # type: ignore[no-redef]
        pass

    def _unavailable(*args, **kwargs):
        raise RuntimeError(f"transformers internals recpeft's kernels need are missing ({MISSING})")

    sdpa_attention_forward = eager_attention_forward = rotate_half = _unavailable  # type: ignore[assignment]


def available() -> bool:
    """Whether every private name above was imported (the Llama patches can be installed)."""
    return MISSING is None


__all__ = ["MISSING", "LlamaAttention", "LlamaDecoderLayer", "LlamaRMSNorm", "available", "eager_attention_forward",
           "rotate_half", "sdpa_attention_forward"]
