"""Hand-written RMSNorm and rotary backward passes: the same function and gradients as transformers' code."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm

from recpeft.config import TrainConfig
from recpeft.kernels import fused
from recpeft.kernels.fused import FusedLlamaAttention, FusedRMSNorm, use_fused
from recpeft.methods import get_method
from recpeft.models.load import load_base
from recpeft.tasks.batches import Encoded, collate


def _with_lora(model):
    model = get_method("lora").attach(model, TrainConfig(domain="news", lora_dropout=0.0), ["q_proj", "v_proj"], 1)
    with torch.no_grad():
        torch.manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.1)
    return model.train()


def _stock_and_fused(tiny_model, attn="sdpa"):
    stock = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn)
    model, tok, _ = load_base(str(tiny_model))
    model.set_attn_implementation(attn)
    return _with_lora(stock), _with_lora(model), tok


def _logits_and_grads(model, batch):
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()  # every position, every logit
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_load_base_swaps_every_norm_and_attention(tiny_model):
    model, _, _ = load_base(str(tiny_model))
    layers = model.config.num_hidden_layers
    assert sum(type(m) is FusedRMSNorm for m in model.modules()) == 2 * layers + 1
    assert sum(type(m) is FusedLlamaAttention for m in model.modules()) == layers
    assert not any(type(m) in (LlamaRMSNorm, LlamaAttention) for m in model.modules())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_same_logits_and_adapter_gradients_as_transformers(tiny_model, attn):
    stock, model, tok = _stock_and_fused(tiny_model, attn)
    texts = ["the user liked a film about a news story", "yes no", "a b c d"]
    batch = collate([Encoded(tok(t, add_special_tokens=False)["input_ids"], 0) for t in texts], tok.pad_token_id)
    ref_logits, ref_grads = _logits_and_grads(stock, batch)
    logits, grads = _logits_and_grads(model, batch)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_rms_norm_forward_is_bit_identical_and_its_gradients_match():
    torch.manual_seed(0)
    stock, mine = LlamaRMSNorm(48, eps=1e-5), LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        stock.weight.normal_(1, 0.3)
        mine.weight.copy_(stock.weight)
    mine.__class__ = FusedRMSNorm
    x = torch.randn(3, 7, 48) * 4
    xs, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, ym = stock(xs), mine(xm)
    assert torch.equal(ys, ym)
    g = torch.randn_like(ys)
    ys.backward(g)
    ym.backward(g)
    assert torch.allclose(xm.grad, xs.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(mine.weight.grad, stock.weight.grad, rtol=1e-5, atol=1e-5)  # a trainable norm too


def test_bf16_activations_keep_transformers_norm():
    norm = LlamaRMSNorm(16).to(torch.bfloat16)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    expected = norm(x)
    norm.__class__ = FusedRMSNorm
    assert torch.equal(norm(x), expected)


def test_rotary_backward_is_the_reverse_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(2, 1, 5, 4, dtype=torch.float64) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)  # halves repeat, as in Llama
    assert torch.autograd.gradcheck(lambda t: fused.rotary(t, cos, sin), (x,))


def test_generation_with_a_kv_cache_matches_transformers(tiny_model):
    stock = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    model, tok, _ = load_base(str(tiny_model))
    model.eval()
    ids = torch.tensor([tok("the user liked a film", add_special_tokens=False)["input_ids"]])
    kwargs = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
    assert torch.equal(model.generate(ids, **kwargs), stock.generate(ids, **kwargs))


def test_another_attention_implementation_falls_back_to_transformers(tiny_model, monkeypatch):
    stock, model, tok = _stock_and_fused(tiny_model, "eager")
    monkeypatch.setattr(fused, "ATTENTION", {"sdpa": fused.ATTENTION["sdpa"]})  # eager: not handled here
    batch = collate([Encoded(tok("a b c d", add_special_tokens=False)["input_ids"], 0)], tok.pad_token_id)
    assert torch.allclose(_logits_and_grads(model, batch)[0], _logits_and_grads(stock, batch)[0], atol=1e-6)


def test_use_fused_leaves_other_modules_alone():
    class OwnNorm(LlamaRMSNorm):  # a subclass has its own forward: not ours to replace
        pass

    model = torch.nn.Sequential(OwnNorm(8), torch.nn.LayerNorm(8))
    assert use_fused(model) == 0
    assert type(model[0]) is OwnNorm
