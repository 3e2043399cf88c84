"""What a base model on CUDA gets that a CPU one does not, and why (issue 15, measured on an H200).

- Attention without per-shape planning. cuDNN's SDPA builds a new execution plan for every new
  (batch, length) shape, and length bucketing makes most batches a new shape: at batch 8 a 0.48 s
  step held ~0.4 s of CPU time in `aten::_cudnn_attention_backward` while the GPU was busy ~24 ms.
  `torch.backends.cuda.enable_cudnn_sdp(False)` leaves SDPA to its flash / memory-efficient kernels,
  which need no plan. This is process-wide (PyTorch has no per-module switch); recpeft.kernels.apply sets
  it when a base is loaded onto CUDA (unless the kernels are switched off) and says so in what it returns.
- Fewer shapes. Batches are left-padded to a multiple of `PAD_MULTIPLE` tokens on CUDA (tensor-core
  friendly, and far fewer distinct shapes for any kernel that specialises on them).
- Fused element-wise kernels. At batch 64 element-wise work (RMSNorm, rotary, SiLU·mul) took ~45% of
  GPU time. liger-kernel's Triton RMSNorm, RoPE and SwiGLU replace them when it is installed
  (`pip install recpeft[gpu]`); recpeft's own CPU backward passes (recpeft.kernels.fused) are not used there.
- Batch size from a token budget. `--batch-size 0` (the default) picks the micro-batch from
  `--batch-tokens` on CUDA, so the default run keeps the GPU busy; on the CPU it stays 8.
"""

from __future__ import annotations

import math

PAD_MULTIPLE = 8  # on CUDA: rows padded to a multiple of this many tokens
CPU_BATCH_SIZE = 8  # --batch-size 0 on the CPU: what the measured CPU defaults were tuned at


def auto_batch_size(lengths: list[int], batch_tokens: int, on_cuda: bool, cap: int = 128) -> int:
    """--batch-size 0: 8 on the CPU; on CUDA the largest power of two whose batches of the 95th-percentile
    length fit in `batch_tokens` tokens (at least 1, at most `cap`)."""
    if not on_cuda or not lengths:
        return CPU_BATCH_SIZE
    longest = sorted(lengths)[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    fits = max(1, batch_tokens // max(1, longest))
    return min(cap, 2 ** int(math.log2(fits)))


def batch_size_for(batch_size: int, batch_tokens: int, lengths: list[int], on_cuda: bool) -> int:
    """The micro-batch size a run uses: `batch_size` when set (> 0), else auto_batch_size."""
    return batch_size if batch_size > 0 else auto_batch_size(lengths, batch_tokens, on_cuda)


def pad_multiple(on_cuda: bool) -> int:
    return PAD_MULTIPLE if on_cuda else 1


def _liger(model) -> bool:
    """liger-kernel's fused RMSNorm / RoPE / SwiGLU on a Llama-family model, if installed."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        return False
    if getattr(model.config, "model_type", None) != "llama":  # apply_liger_kernel_to_llama patches Llama's module
        return False
    apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)
    return True


def configure(model) -> list[str]:
    """Apply the CUDA-only settings above to a base already on CUDA. Returns what was applied."""
    import torch

    applied = []
    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        applied.append("sdpa: cuDNN off (no per-shape plans)")
    if _liger(model):
        applied.append("liger-kernel: RMSNorm, RoPE, SwiGLU")
    return applied
