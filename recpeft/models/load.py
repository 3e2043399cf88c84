"""Load a base model and its tokenizer, and fingerprint them (what an adapter is checked against).

The model is frozen on load; the kernels of recpeft/kernels/ are applied here (see kernels.apply)."""

from __future__ import annotations

import hashlib
import json

from recpeft.errors import UserError
from recpeft.models.hub import resolve
from recpeft.runtime import release_memory

# Config keys that change with the library version or the load dtype, not with the model itself.
VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype",
                        "quantization_config", "use_cache", "_attn_implementation_autoset"}


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from '{source}': {str(exc).splitlines()[0]}. "
                        "Pass --model with a local HF folder, or a hub id reachable from here") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # the answer is read at the last position of every row
    return tok


def resolve_bits(bits: int, on_cuda: bool | None = None) -> int:
    """0 = auto: 8-bit on CUDA (the mission's configuration), 32-bit on CPU (bitsandbytes is slow there).
    on_cuda: whether the model runs on CUDA (None = whether a GPU exists; a trainer passes its process's device)."""
    import torch

    if on_cuda is None:
        on_cuda = torch.cuda.is_available()
    return bits or (8 if on_cuda else 32)


def load_base(name_or_path: str, bits: int = 32, device=None, kernels: bool | None = None):
    """Load the frozen base causal LM and its tokenizer. Returns (model, tokenizer, source).

    bits: 32 (fp32), 16 (bf16), 8 or 4 (bitsandbytes int8 / nf4; each process keeps its own quantised
    copy on its own device). device: where the model goes (a CUDA index or "cuda:N", or "cpu"); default
    the first GPU when there is one, at every precision, else the CPU. kernels: recpeft's optional
    kernels on or off (None: on unless RECPEFT_KERNELS=off; see recpeft.kernels).
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = resolve(name_or_path)
    tok = load_tokenizer(source)
    if device is None:
        device = 0 if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(f"cuda:{device}" if isinstance(device, int) else device).type == "cuda"
    # Quantised on CUDA: what stays unquantised (embeddings, norms) and the activations are bf16. On CPU,
    # fp32: bitsandbytes' CPU kernels and most CPUs are slow in bf16.
    half = bits == 16 or (bits in (4, 8) and on_cuda)
    # use_safetensors: weights are never unpickled; a folder or hub repo with only *.bin files is refused
    kwargs: dict = {"attn_implementation": "sdpa", "dtype": torch.bfloat16 if half else torch.float32,
                    "use_safetensors": True}
    if bits in (4, 8):
        compute = torch.bfloat16 if on_cuda else torch.float32
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute))
    if bits in (4, 8) or on_cuda:  # loaded straight onto the device; a CPU fp32/bf16 load stays as it was
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]}") from None
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    from recpeft.kernels import apply

    apply(model, enabled=kernels)  # every patch recpeft installs, listed in model.recpeft_kernels
    # The loader's freed full-precision copies stay in the heap; give them back (see runtime.py).
    release_memory()
    return model, tok, source


def config_fingerprint(model_config) -> str:
    """Hash of the architecture config (what the weights' shapes and semantics depend on)."""
    cfg = {k: v for k, v in model_config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary and special tokens (what prompts and verbaliser ids depend on)."""
    h = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.eos_token, tokenizer.bos_token]).encode())
    return h.hexdigest()[:16]


def fingerprint(model_config, tokenizer) -> str:
    """Identifies a base model: its architecture config and its tokenizer together."""
    return hashlib.sha256(
        f"{config_fingerprint(model_config)}:{tokenizer_fingerprint(tokenizer)}".encode()).hexdigest()[:16]


def default_targets(model) -> list[str]:
    """LoRA target modules of common decoder families: the query and value projections (the LoRA
    paper's choice), which keeps a SmolLM2-135M adapter under 1% of the base model's bytes."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for family in (["q_proj", "v_proj"], ["c_attn"], ["query_key_value"]):
        if all(f in names for f in family):
            return family
    raise UserError("cannot pick default LoRA target modules for this architecture; pass --target-modules")
