"""Houlsby bottleneck adapters on tiny random decoders (hidden 32, 2 layers), built from configs offline."""

import json

import pytest
import safetensors.torch
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from recpeft.methods import bottleneck as bn
from recpeft.methods.bottleneck import BottleneckConfig

torch.set_num_threads(1)

VOCAB, HIDDEN, LAYERS = 100, 32, 2
LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
BUILDERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**LLAMA_LIKE)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**LLAMA_LIKE)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**LLAMA_LIKE, sliding_window=None)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4,
                                               n_positions=64, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                                                embd_pdrop=0.0, attn_pdrop=0.0)),
}


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILDERS[arch]().eval()


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 12), generator=g)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def randomise_adapters(model):
    """Give the adapters non-zero weights so round trips compare something other than zeros."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in bn.trainable_parameters(model):
            p.normal_(std=0.1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_untrained_adapter_is_exact_identity(arch, placement, batch):
    model = tiny(arch)
    before = logits(model, batch)
    assert bn.attach(model, BottleneckConfig(placement=placement, reduction_factor=4)) is model
    assert torch.equal(logits(model, batch), before)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("placement,per_block", [("houlsby", 2), ("pfeiffer", 1)])
def test_adapter_count_and_size(arch, placement, per_block):
    model = bn.attach(tiny(arch), BottleneckConfig(placement=placement, reduction_factor=4))
    wrapped = [m for m in model.modules() if isinstance(m, bn.AdapterWrapped)]
    assert len(wrapped) == per_block * LAYERS
    for w in wrapped:
        assert w.adapter.down.out_features == HIDDEN // 4
        assert w.adapter.up.out_features == HIDDEN
        assert torch.count_nonzero(w.adapter.up.weight) == 0 and torch.count_nonzero(w.adapter.up.bias) == 0
    # A huge reduction factor still leaves a bottleneck of one unit.
    tiny_bn = bn.attach(tiny(arch), BottleneckConfig(placement=placement, reduction_factor=1000))
    assert {m.adapter.down.out_features for m in tiny_bn.modules() if isinstance(m, bn.AdapterWrapped)} == {1}


def test_target_layers_and_stable_keys():
    model = bn.attach(tiny("llama"), BottleneckConfig(target_layers=[1], reduction_factor=4))
    assert sorted(bn.adapter_state_dict(model)) == sorted(
        f"model.layers.1.{sub}.adapter.{p}.{t}"
        for sub in ("self_attn.o_proj", "mlp.down_proj") for p in ("down", "up") for t in ("weight", "bias"))
    # The original linear stays reachable as base_layer.
    assert isinstance(model.model.layers[1].self_attn.o_proj.base_layer, torch.nn.Linear)
    with pytest.raises(ValueError, match="out of range"):
        bn.attach(tiny("llama"), BottleneckConfig(target_layers=[5]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_adapters_train_and_loss_falls(arch, batch):
    model = bn.attach(tiny(arch), BottleneckConfig(reduction_factor=4))
    adapter_ids = {id(p) for w in model.modules() if isinstance(w, bn.AdapterWrapped) for p in w.adapter.parameters()}
    trainable = bn.trainable_parameters(model)
    assert trainable and {id(p) for p in trainable} == adapter_ids
    base = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in adapter_ids}

    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Tiny random models start near-uniform (loss ~ ln 100); a steady fall is what matters.
    assert losses[-1] < losses[0] - 0.05 and losses[-1] < min(losses[:5])
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_load_round_trip(arch, tmp_path, batch):
    config = BottleneckConfig(reduction_factor=4, non_linearity="gelu")
    model = bn.attach(tiny(arch), config)
    randomise_adapters(model)
    expected = logits(model, batch)
    assert not torch.equal(expected, logits(tiny(arch), batch))  # the adapters really change something

    out = tmp_path / "nested" / "adapter"
    bn.save(model, out, config)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "RECPEFT_BOTTLENECK" and saved["non_linearity"] == "gelu"

    fresh = bn.load(tiny(arch), out)
    assert torch.equal(logits(fresh, batch), expected)
    assert [p.requires_grad for p in fresh.parameters()].count(True) == len(bn.trainable_parameters(fresh))


def test_state_dict_keys_ignore_wrapper_prefixes():
    class Outer(torch.nn.Module):  # stands in for a PeftModel: the real model sits one level down
        def __init__(self, inner):
            super().__init__()
            self.base_model = inner

        def get_base_model(self):
            return self.base_model

    inner = bn.attach(tiny("llama"), BottleneckConfig(reduction_factor=4))
    assert list(bn.adapter_state_dict(Outer(inner))) == list(bn.adapter_state_dict(inner))


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_llama_family_attach_and_run(arch, batch):
    model = tiny(arch)
    before = logits(model, batch)
    bn.attach(model, BottleneckConfig(reduction_factor=4))
    assert len([m for m in model.modules() if isinstance(m, bn.AdapterWrapped)]) == 2 * LAYERS
    assert torch.equal(logits(model, batch), before)
    randomise_adapters(model)
    out = logits(model, batch)
    assert out.shape == (2, 12, VOCAB) and torch.isfinite(out).all() and not torch.equal(out, before)


def test_rejects_unsupported_architecture_bad_options_and_double_attach():
    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                            num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="support llama, qwen2, mistral, gpt2; got gpt_neox"):
        bn.attach(neox, BottleneckConfig())
    assert all(p.requires_grad for p in neox.parameters())  # nothing was frozen on the way out

    with pytest.raises(ValueError, match="relu, gelu, silu, tanh"):
        BottleneckConfig(non_linearity="swish")
    with pytest.raises(ValueError, match="placement"):
        BottleneckConfig(placement="everywhere")

    model = bn.attach(tiny("llama"), BottleneckConfig())
    with pytest.raises(ValueError, match="already attached"):
        bn.attach(model, BottleneckConfig())


def _saved(tmp_path):
    config = BottleneckConfig(reduction_factor=4)
    model = bn.attach(tiny("llama"), config)
    bn.save(model, tmp_path, config)
    return tmp_path / "adapter_model.safetensors"


def test_load_rejects_missing_key_and_leaves_model_untouched(tmp_path, batch):
    weights = _saved(tmp_path)
    state = safetensors.torch.load_file(str(weights))
    dropped = sorted(state)[0]
    del state[dropped]
    safetensors.torch.save_file(state, str(weights))

    model = tiny("llama")
    with pytest.raises(ValueError, match=f"missing keys.*{dropped}"):
        bn.load(model, tmp_path)
    assert not any(isinstance(m, bn.AdapterWrapped) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_load_rejects_unexpected_key_and_bad_shape(tmp_path):
    weights = _saved(tmp_path)
    state = safetensors.torch.load_file(str(weights))
    safetensors.torch.save_file({**state, "model.layers.9.extra": torch.zeros(1)}, str(weights))
    with pytest.raises(ValueError, match="unexpected keys"):
        bn.load(tiny("llama"), tmp_path)

    key = sorted(state)[0]
    safetensors.torch.save_file({**state, key: torch.zeros(3, 3)}, str(weights))
    with pytest.raises(ValueError, match="shapes"):
        bn.load(tiny("llama"), tmp_path)


def test_adapter_follows_weight_dtype_and_uses_float32_over_int8(batch):
    class Int8Linear(torch.nn.Linear):  # stands in for bitsandbytes' Linear8bitLt: int8 weight, float output
        def __init__(self, lin):
            super().__init__(lin.in_features, lin.out_features, bias=False, dtype=torch.bfloat16)
            self.weight = torch.nn.Parameter(torch.ones_like(lin.weight, dtype=torch.int8), requires_grad=False)

        def forward(self, x):
            return x @ self.weight.to(x.dtype).T

    model = tiny("llama").to(torch.bfloat16)
    layer = model.model.layers[0].mlp
    layer.down_proj = Int8Linear(layer.down_proj)
    bn.attach(model, BottleneckConfig(reduction_factor=4))
    assert model.model.layers[0].self_attn.o_proj.adapter.up.weight.dtype == torch.bfloat16
    assert layer.down_proj.adapter.up.weight.dtype == torch.float32
    assert logits(model, batch).dtype == torch.bfloat16


def test_the_cli_choices_are_the_modules_own():
    """settings.py (no torch, read by the CLI) names what bottleneck.py builds: the two lists cannot drift."""
    from recpeft.methods import bottleneck, settings

    assert tuple(bottleneck._ACTIVATIONS) == settings.NON_LINEARITIES
    assert bottleneck._PLACEMENTS == settings.PLACEMENTS
