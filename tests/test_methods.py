"""LoRA, AdaLoRA and the Houlsby Adapter behind one interface, on a 32-bit and an 8-bit base."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recpeft.config import TrainConfig
from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.evaluation.scoring import answer_logits
from recpeft.methods import load_adapter, method_of
from recpeft.models.load import load_base
from recpeft.tasks.batches import collate, encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import answer_token_ids
from recpeft.training.trainer import train


def _cfg(tiny_model, data, out, method, bits):
    return TrainConfig(domain="news", model=str(tiny_model), data=str(data), output_dir=str(out), method=method,
                       bits=bits, max_steps=30, eval_every=30, batch_size=8, lr=1e-2, eval_samples=16,
                       test_samples=16, patience=0, lora_dropout=0.0, threads=1, init_r=6, target_r=2,
                       reduction_factor=4, runs_dir=str(Path(out).parent / "runs"))


def _logits(model, tok, n=6):
    data, domain = load_sample("news"), get_domain("news")
    batch = collate(encode(preference_examples(data)["test"][:n], data, domain, tok, 10, 320), tok.pad_token_id)
    with torch.no_grad():
        return answer_logits(model.eval(), batch, answer_token_ids(tok))


@pytest.mark.parametrize(("method", "bits"), [(m, b) for m in ("lora", "adalora", "adapter") for b in (32, 8)]
                         + [("lora", 4), ("lora", 16)])
def test_method_trains_saves_and_reloads(method, bits, tiny_model, skewed_news, tmp_path):
    out = tmp_path / "adapter"
    result = train(_cfg(tiny_model, skewed_news, out, method, bits), show_progress=False)
    # a few steps lower the loss
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.05, (first, last)
    # the base weights are bit-identical to a fresh load at the same precision
    fresh, tok, _ = load_base(str(tiny_model), bits=bits)
    fresh_state = fresh.state_dict()
    trained_base = result.model.get_base_model() if hasattr(result.model, "get_base_model") else result.model
    for name, tensor in trained_base.state_dict().items():
        clean = name.replace(".base_layer", "")
        if clean in fresh_state and "lora_" not in name and ".adapter." not in name:
            assert torch.equal(tensor.cpu(), fresh_state[clean].cpu()), name
    # save -> reload on a fresh base gives identical logits
    assert method_of(out) == method
    reloaded = load_adapter(load_base(str(tiny_model), bits=bits)[0], out)
    torch.testing.assert_close(_logits(reloaded, tok), _logits(result.model, tok), atol=0, rtol=0)
    meta = json.loads((out / "recpeft.json").read_text())
    assert meta["method"] == method and meta["metrics"]["bits"] == bits


def test_adalora_budget_shrinks_towards_target(tiny_model, skewed_news, tmp_path):
    cfg = _cfg(tiny_model, skewed_news, tmp_path / "ada", "adalora", 32)
    result = train(cfg, show_progress=False)
    budget = result.metrics["rank_budget"]
    layers = len(result.metrics["ranks"])
    assert budget["init"] == 6 * layers
    assert budget["final"] < budget["init"] and budget["final"] <= 2 * layers
    saved = json.loads((tmp_path / "ada" / "adapter_config.json").read_text())
    assert saved["rank_pattern"]  # the final pattern travels with the adapter


def test_adapter_is_small_and_targets_every_block(tiny_model, skewed_news, tmp_path):
    train(_cfg(tiny_model, skewed_news, tmp_path / "ad", "adapter", 32), show_progress=False)
    state = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    sites = {k.split(".adapter.")[0] for k in state}
    assert len(sites) == 2 * 2  # houlsby: attention and MLP of both blocks
    assert state[next(k for k in state if k.endswith("down.weight"))].shape == (8, 32)  # 32 / reduction 4


def test_adalora_rank_pattern_zeroes_pruned_singular_values(tiny_model):
    from recpeft.methods import adalora

    base, _, _ = load_base(str(tiny_model))
    model = adalora.METHOD.attach(base, TrainConfig(method="adalora", init_r=4, target_r=2), ["q_proj", "v_proj"], 20)
    names = [n for n, _ in model.named_parameters() if "lora_E" in n]
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_E" in n:
                p.fill_(1.0)
    # peft's own key format: parameter name without the "base_model.model." prefix
    model.peft_config["default"].rank_pattern = {
        n.replace("base_model.model.", "", 1): [True, False, True, False] for n in names}
    adalora.apply_rank_pattern(model)
    assert all(v == 2 for v in adalora.ranks(model).values()) and len(adalora.ranks(model)) == len(names)


def test_adalora_rank_pattern_without_adapter_name_also_applies(tiny_model):
    from recpeft.methods import adalora

    base, _, _ = load_base(str(tiny_model))
    model = adalora.METHOD.attach(base, TrainConfig(method="adalora", init_r=4, target_r=2), ["q_proj", "v_proj"], 20)
    names = [n for n, _ in model.named_parameters() if "lora_E" in n]
    model.peft_config["default"].rank_pattern = {
        n.replace("base_model.model.", "", 1).replace(".default", ""): [False, False, False, True] for n in names}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_E" in n:
                p.fill_(1.0)
    adalora.apply_rank_pattern(model)
    assert all(v == 1 for v in adalora.ranks(model).values())


def test_adalora_on_a_bf16_8bit_base_keeps_activations_bf16(tiny_model):
    """On CUDA, 8-bit bases keep bf16 for what is not quantised. peft's 8-bit AdaLoRA layer divides by an
    fp32 `ranknum`, which turned q/v into fp32 and broke attention (seen on an H200; same on CPU)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from recpeft.methods.adalora import METHOD

    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                                dtype=torch.bfloat16, device_map={"": "cpu"},
                                                attn_implementation="sdpa")
    cfg = TrainConfig(domain="news", method="adalora", init_r=4, target_r=2)
    model = METHOD.attach(base, cfg, ["q_proj", "v_proj"], total_steps=10)
    logits = model(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_adalora_schedule_adapts_defaults_and_refuses_user_values_that_leave_no_pruning():
    from recpeft.errors import UserError
    from recpeft.methods.adalora import schedule

    assert schedule(TrainConfig(domain="news", method="adalora"), 100) == (10, 20)
    assert schedule(TrainConfig(domain="news", method="adalora"), 4) == (1, 1)
    assert schedule(TrainConfig(domain="news", method="adalora"), 2) == (0, 0)  # defaults shrink to fit
    assert schedule(TrainConfig(domain="news", method="adalora", tinit=5, tfinal=5), 100) == (5, 5)
    with pytest.raises(UserError, match="tinit 30 \\+ tfinal 7 leave no step .* 35-step run"):
        schedule(TrainConfig(domain="news", method="adalora", tinit=30), 35)


# ------------------------------------------------------------------------------ the method protocol


def test_every_registered_method_is_a_method_object():
    from recpeft.methods import METHODS, get_method
    from recpeft.methods.base import Method

    for name, (_, peft_type) in METHODS.items():
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name and method.peft_type == peft_type
    # what only AdaLoRA needs is declared on it, not probed: the others keep the no-op defaults
    assert get_method("adalora").checkpoint_name == "adalora"
    assert get_method("lora").checkpoint_name is None and get_method("lora").extra_loss(None) is None
    assert get_method("adapter").report(None, TrainConfig()) == {}


# ------------------------------------------------------------------------------ recpeft.json

# recpeft.json as an earlier version wrote it: no tokenizer/config fingerprints yet, a key since dropped
EARLIER = {"format_version": 1, "recpeft_version": "0.0.9", "domain": "news", "method": "lora", "task": "preference",
           "positive_verb": "click", "prompt_template": "preference-v1",
           "verbalizer": {"answers": ["Yes", "No"], "token_ids": [5, 6]},
           "base_model": {"name": "smollm2-135m", "source": "/cache/smollm2", "fingerprint": "abc"},
           "target_modules": ["q_proj"], "trainable_parameters": 10, "data": {"name": "news", "fingerprint": "d1"},
           "train_config": {"lora_r": 8}, "metrics": {"bits": 32, "test_auc": 0.6}, "history": [{"step": 0}],
           "privacy": None, "dropped_key": [1, 2]}


def test_a_recpeft_json_written_earlier_reads_typed_and_writes_back_the_same(tmp_path):
    from recpeft.adapter_meta import read_meta, write_meta

    (tmp_path / "recpeft.json").write_text(json.dumps(EARLIER))
    meta = read_meta(tmp_path)
    assert meta.base_model.name == "smollm2-135m" and meta.base_model.config_fingerprint is None
    assert meta.data.fingerprint == "d1" and meta.metrics["bits"] == 32 and meta.extra == {"dropped_key": [1, 2]}
    assert meta.to_dict() == EARLIER
    write_meta(tmp_path / "again", meta)
    assert json.loads((tmp_path / "again" / "recpeft.json").read_text()) == EARLIER


@pytest.mark.parametrize(("text", "says"), [
    ("[]", "malformed recpeft.json: not a JSON object"),
    ('{"domain": "news", "base_model": {"name": "x"}}', "malformed recpeft.json: no 'method'"),
    ('{"domain": "news", "method": "lora", "base_model": {}}', "'base_model' has no 'name'"),
    ('{"domain": "news", "method": "lora", "base_model": "x"}', "'base_model' is not a JSON object"),
    ('{"domain": "news", "method": "lora", "base_model": null}', "malformed recpeft.json: no 'base_model'"),
    ('{"domain": null, "method": "lora", "base_model": {"name": "x"}}', "malformed recpeft.json: no 'domain'"),
    ("{\n oops", "malformed JSON"),
])
def test_a_malformed_recpeft_json_is_one_line_naming_the_file(text, says, tmp_path):
    from recpeft.adapter_meta import read_meta
    from recpeft.errors import UserError

    (tmp_path / "recpeft.json").write_text(text)
    with pytest.raises(UserError) as err:
        read_meta(tmp_path)
    assert says in str(err.value) and str(tmp_path / "recpeft.json") in str(err.value)
    assert "\n" not in str(err.value)
