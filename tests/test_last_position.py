"""The last decoder block at the last position only: same logits and adapter gradients as the full block."""

from __future__ import annotations

import contextlib

import pytest
import torch

from recpeft.config import TrainConfig
from recpeft.evaluation.scoring import answer_rows
from recpeft.kernels._transformers import LlamaAttention, LlamaDecoderLayer
from recpeft.kernels.last_position import LastPositionLlamaLayer, last_position, use_last_position
from recpeft.methods import get_method
from recpeft.models.load import load_base
from recpeft.serving.prefix import cached_answer_logits
from recpeft.tasks.batches import Encoded, collate
from recpeft.tasks.prompts import answer_token_ids


def _adapted(tiny_model, method="lora", bits=32):
    model, tok, _ = load_base(str(tiny_model), bits=bits)
    cfg = TrainConfig(domain="news", method=method, lora_dropout=0.0, non_linearity="tanh")  # no dead units
    model = get_method(method).attach(model, cfg, ["q_proj", "v_proj"], 1)
    with torch.no_grad():  # non-zero adapters everywhere, so every trainable weight gets a gradient
        torch.manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return model.train(), tok


def _layers(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft, or the Houlsby adapter
    return base.model.layers


def _padded_batch(tok):
    texts = ["the user liked a film about a news story", "yes no", "a b c d"]
    return collate([Encoded(tok(t, add_special_tokens=False)["input_ids"], 0) for t in texts], tok.pad_token_id)


def _logits_and_grads(model, batch, answers, narrow: bool):
    model.zero_grad()
    with answer_rows(model, answers), (last_position(model) if narrow else contextlib.nullcontext()):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=1).logits[:, -1]
    (logits * torch.tensor([1.0, -2.0])).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(model, tok, atol=1e-5):
    batch, answers = _padded_batch(tok), answer_token_ids(tok)
    assert (batch["attention_mask"] == 0).any()  # left padding: the last query's mask row matters
    widths = []
    block = _layers(model)[-1]
    handle = block.register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    try:
        full, full_grads = _logits_and_grads(model, batch, answers, narrow=False)
        narrow, narrow_grads = _logits_and_grads(model, batch, answers, narrow=True)
    finally:
        handle.remove()
    assert widths == [batch["input_ids"].shape[1], 1]  # the narrowed block returned one position
    assert torch.allclose(full, narrow, atol=atol)
    assert full_grads.keys() == narrow_grads.keys() and full_grads
    for name, grad in full_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, narrow_grads[name], atol=atol), name


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_narrowed_last_block_gives_the_same_logits_and_gradients(tiny_model, method):
    model, tok = _adapted(tiny_model, method)
    assert isinstance(_layers(model)[-1], LastPositionLlamaLayer)  # installed at load, by kernels.apply
    _assert_same(model, tok)
    assert type(_layers(model)[0]).__name__ == "LlamaDecoderLayer"  # only the last block


def test_narrowed_last_block_with_eager_attention(tiny_model):
    model, tok = _adapted(tiny_model)
    model.get_base_model().set_attn_implementation("eager")
    _assert_same(model, tok)


def test_narrowed_last_block_on_an_8bit_base(tiny_model):
    model, tok = _adapted(tiny_model, bits=8)
    _assert_same(model, tok, atol=1e-4)


def test_narrowed_last_block_under_gradient_checkpointing(tiny_model):
    # The backward pass re-runs the block outside the caller's context: it must re-run the narrowed one.
    model, tok = _adapted(tiny_model)
    model.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    _assert_same(model, tok)


def test_cached_prefix_scores_are_unchanged_by_the_narrowed_block(tiny_model, monkeypatch):
    # The prefix's forward fills the last block's cache from the narrowed block; suffixes then read it.
    import recpeft.serving.prefix

    model, tok = _adapted(tiny_model)
    model.eval()
    prefix = tok("the user liked a film about", add_special_tokens=False)["input_ids"]
    suffixes = [tok(t, add_special_tokens=False)["input_ids"] for t in ("news", "a b c story", "yes")]
    widths = []
    handle = _layers(model)[-1].register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    narrowed = cached_answer_logits(model, prefix, suffixes, answer_token_ids(tok), tok.pad_token_id)
    monkeypatch.setattr(recpeft.serving.prefix, "last_position", lambda model: contextlib.nullcontext(False))
    full = cached_answer_logits(model, prefix, suffixes, answer_token_ids(tok), tok.pad_token_id)
    handle.remove()
    assert widths[0] == 1 and widths[-1] > 1  # narrowed, then full
    assert torch.allclose(full, narrowed, atol=1e-5)


def test_outside_the_context_the_block_is_the_stock_one(tiny_model):
    model, tok = _adapted(tiny_model)
    keys = set(model.state_dict())
    with last_position(model) as narrowed:
        assert narrowed
    ids = torch.tensor([[3, 4, 5, 6]])
    out = model(input_ids=ids, output_hidden_states=True)
    assert set(model.state_dict()) == keys
    assert out.logits.shape[1] == 4 and out.hidden_states[-1].shape[1] == 4


def test_an_unknown_block_layout_is_left_alone(tiny_model):
    model, tok = _adapted(tiny_model)
    layers = _layers(model)

    class Wrapped(torch.nn.Module):  # another family's block: computes everything, as before
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    layers[-1] = Wrapped(layers[-1])
    with last_position(model) as narrowed:
        assert not narrowed
    assert use_last_position(model) is False  # nothing to prepare either
    assert type(layers[-1]) is Wrapped


def test_the_context_narrows_only_a_block_apply_prepared(tiny_model):
    # The class is installed at load (recpeft.kernels.apply), never by the context: a stock block stays stock.
    model, tok = _adapted(tiny_model)
    _layers(model)[-1].__class__ = LlamaDecoderLayer
    _layers(model)[-1].self_attn.__class__ = LlamaAttention
    with last_position(model) as narrowed:
        assert not narrowed
    assert type(_layers(model)[-1]) is LlamaDecoderLayer
    assert use_last_position(model) and isinstance(_layers(model)[-1], LastPositionLlamaLayer)
