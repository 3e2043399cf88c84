import json

import pytest
import torch
from peft import PeftModel

from recpeft.artifacts import CONTRACT_FILES
from recpeft.config import TrainConfig
from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.evaluation.scoring import answer_logits
from recpeft.models.load import fingerprint, load_base
from recpeft.tasks.batches import collate, encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import answer_token_ids
from recpeft.training.trainer import train


def tiny_cfg(tiny_model, out, **kw) -> TrainConfig:
    base = dict(domain="news", model=str(tiny_model), output_dir=str(out), max_steps=30, batch_size=8, lr=2e-2,
                eval_every=10, eval_samples=48, test_samples=48, patience=0, lora_dropout=0.0, threads=1,
                runs_dir=str(out.parent / "runs"))
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "adapters" / "news"
    return train(tiny_cfg(tiny_model, out), show_progress=False), out


def test_a_few_steps_lower_the_loss(tiny_model, skewed_news, tmp_path):
    cfg = tiny_cfg(tiny_model, tmp_path / "out", data=str(skewed_news), max_steps=30, eval_every=30, lr=1e-2)
    result = train(cfg, save=False, show_progress=False)
    assert len(result.losses) == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.1, (first, last)
    assert not (tmp_path / "out").exists()  # save=False writes nothing


def test_adapter_dir_holds_exactly_the_contract(trained, tiny_model):
    result, out = trained
    assert result.output_dir == str(out)
    assert {p.name for p in out.iterdir()} == CONTRACT_FILES
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    meta = json.loads((out / "recpeft.json").read_text())
    _, tok, _ = load_base(str(tiny_model))
    assert meta["domain"] == "news" and meta["method"] == "lora" and meta["task"] == "preference"
    assert meta["verbalizer"]["token_ids"] == answer_token_ids(tok)
    assert meta["base_model"]["fingerprint"] == fingerprint(result.model.config, tok)
    assert meta["train_config"]["max_steps"] == 30
    assert set(meta["metrics"]) >= {"valid_auc", "valid_auc_base", "test_auc", "test_auc_base"}
    # adapter weights are small: nothing of the base is saved
    base_bytes = sum(p.numel() * 4 for p in load_base(str(tiny_model))[0].parameters())
    assert (out / "adapter_model.safetensors").stat().st_size < base_bytes


def test_plain_peft_reloads_the_adapter_with_identical_logits(trained, tiny_model):
    result, out = trained
    base, tok, _ = load_base(str(tiny_model))
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    result.model.eval()
    data, domain = load_sample("news"), get_domain("news")
    batch = collate(encode(preference_examples(data)["test"][:8], data, domain, tok, 10, 320), tok.pad_token_id)
    ids = answer_token_ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(answer_logits(reloaded, batch, ids), answer_logits(result.model, batch, ids),
                                   atol=0, rtol=0)


def test_base_weights_are_untouched(trained, tiny_model):
    result, _ = trained
    fresh, _, _ = load_base(str(tiny_model))
    trained_base = result.model.get_base_model()
    fresh_state = fresh.state_dict()
    for name, tensor in trained_base.state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer", "")
        assert torch.equal(tensor, fresh_state[clean]), name


def test_best_validation_checkpoint_is_kept(trained):
    result, _ = trained
    m = result.metrics
    best = max(h["valid_auc"] for h in result.history)
    assert m["valid_auc"] == best
    assert m["best_step"] in [h["step"] for h in result.history if h["valid_auc"] == best]


def test_adapter_for_another_base_is_refused_unless_forced(trained, tmp_path):
    import warnings

    from conftest import build_tiny_model

    from recpeft import load_adapter
    from recpeft.errors import UserError

    _, out = trained
    other, tok, _ = load_base(str(build_tiny_model(tmp_path / "other", layers=3)))
    with pytest.raises(UserError) as err:
        load_adapter(other, out, tokenizer=tok)
    assert "trained on base model" in str(err.value) and "the loaded base is" in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_adapter(other, out, tokenizer=tok, force=True)
    assert any("loading anyway" in str(w.message) for w in caught)


def test_matching_base_loads_through_the_public_api(trained, tiny_model):
    from recpeft import load_adapter

    result, out = trained
    base, tok, _ = load_base(str(tiny_model))
    model = load_adapter(base, out, tokenizer=tok)
    data, domain = load_sample("news"), get_domain("news")
    batch = collate(encode(preference_examples(data)["test"][:4], data, domain, tok, 10, 320), tok.pad_token_id)
    ids = answer_token_ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(answer_logits(model.eval(), batch, ids),
                                   answer_logits(result.model.eval(), batch, ids), atol=0, rtol=0)


def test_adapter_files_are_readable_by_others(trained):
    import os
    import stat

    _, out = trained
    mask = os.umask(0)
    os.umask(mask)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name
