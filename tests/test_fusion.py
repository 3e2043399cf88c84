"""Item fusion (--fusion) end to end: trained with each method, saved, resumed, merged (refused), evaluated and
served (Python, cached prefix, HTTP). Its parts alone are in tests/test_fusion_parts.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recpeft.errors import UserError


@pytest.fixture(scope="module")
def fused_run(tiny_task_model, tmp_path_factory):
    """A 4-step ranking run with --fusion cf --fusion-context history on the embedded video sample: (TrainResult,
    adapter folder). On its 4 validation users the untrained adapter scores best, so the saved projector is the
    zero-initialised one: tests that need item vectors to matter give it weights."""
    from recpeft.config import build_config
    from recpeft.training.trainer import train

    work = tmp_path_factory.mktemp("fused")
    cfg = build_config(None, domain="video", model=str(tiny_task_model), task="ranking", fusion="cf", fusion_dim=8,
                       fusion_context="history", max_steps=4, eval_every=2, batch_size=4, eval_samples=4,
                       test_samples=4, negatives=5, patience=0, threads=1, lr=0.05, runs_dir=str(work / "runs"),
                       output_dir=str(work / "out"))
    return train(cfg, show_progress=False), work / "out"


def test_trained_fusion_adapter_is_saved_and_served_as_trained(fused_run):
    """The loaded adapter (recpeft.load: fusion.safetensors, markers, cached prefix) gives the scores the run's
    own test evaluation gave, for the same users and candidates."""
    import recpeft
    from recpeft.data import load_data
    from recpeft.data.schema import Item
    from recpeft.tasks.examples import ranking_examples, subsample

    result, folder = fused_run
    meta = json.loads((folder / "recpeft.json").read_text())
    assert meta["fusion"]["source"] == "cf:als" and meta["fusion"]["dim"] == 8
    assert meta["fusion"]["context"] == "history"
    assert (folder / "fusion.safetensors").is_file()
    card = (folder / "README.md").read_text()
    assert "## Item fusion" in card and "reads the mean vector of the items before each one" in card
    assert meta["fusion"]["token_scale"] == meta["metrics"]["fusion_token_scale"]  # measured once, in metrics
    assert f"moved the tokens {meta['fusion']['token_scale']:.1%}" in card
    rec = recpeft.load(folder)
    assert rec.fusion is not None
    data = load_data("video", None, None)
    examples = subsample(ranking_examples(data, negatives=5, seed=42)["test"], 4, 42)
    for ex, want in zip(examples, result.test_outputs["scores"]):
        history = [(data.items[x.item_id], x.liked) for x in ex.history]
        got = rec.score(history, [data.items[c] for c in ex.candidates])
        assert got == pytest.approx(want, abs=1e-5)
    # the item vectors matter: with a non-zero projector (on 4 validation examples the saved adapter may be the
    # untrained one), the same titles and categories without their ids get the unknown vector instead
    torch.manual_seed(0)
    torch.nn.init.normal_(rec.fusion.module.projector[-1].weight)
    ex = examples[0]
    history = [(data.items[x.item_id], x.liked) for x in ex.history]
    cands = [data.items[c] for c in ex.candidates]
    bare = [Item(c.title, c.title, c.category) for c in cands]
    assert rec.score(history, bare) != pytest.approx(rec.score(history, cands), abs=1e-4)
    # plain peft loading still works for the LoRA part
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(meta["base_model"]["name"]), str(folder))


def test_merge_refuses_a_fusion_adapter(fused_run, tmp_path):
    from recpeft.serving.merge import merge_adapter

    with pytest.raises(UserError, match="--fusion"):
        merge_adapter(fused_run[1], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_feature_file_adapter_needs_its_file(tiny_task_model, tmp_path):
    """--fusion file: the adapter records the file's fingerprint; a changed or missing file is a clear error."""
    from safetensors.numpy import save_file

    import recpeft
    from recpeft.config import build_config
    from recpeft.data import load_data
    from recpeft.training.trainer import train

    data = load_data("news", None, None)
    ids = sorted(data.items)
    vec = np.random.default_rng(0).normal(size=(len(ids), 6)).astype(np.float32)
    features = tmp_path / "features.safetensors"
    save_file({"vectors": vec}, str(features), metadata={"item_ids": json.dumps(ids)})
    cfg = build_config(None, domain="news", model=str(tiny_task_model), fusion="file", item_features=str(features),
                       fusion_projector="linear", fusion_tokens=2, max_steps=2, eval_every=2, batch_size=4,
                       eval_samples=4, test_samples=4, patience=0, threads=1, runs_dir=str(tmp_path / "runs"),
                       output_dir=str(tmp_path / "out"))
    train(cfg, show_progress=False)
    meta = json.loads((tmp_path / "out" / "recpeft.json").read_text())
    assert meta["fusion"]["features"] == str(features.resolve()) and meta["fusion"]["tokens"] == 2
    item = data.items[ids[0]]
    before = recpeft.load(tmp_path / "out").score([item], [data.items[ids[1]]])
    save_file({"vectors": vec + 1}, str(features), metadata={"item_ids": json.dumps(ids)})
    with pytest.raises(UserError, match="other item features"):
        recpeft.load(tmp_path / "out")
    save_file({"vectors": vec}, str(features), metadata={"item_ids": json.dumps(ids)})
    moved = Path(features.rename(tmp_path / "moved.safetensors"))
    with pytest.raises(UserError, match="not found"):
        recpeft.load(tmp_path / "out")
    assert recpeft.load(tmp_path / "out", item_features=moved).score([item], [data.items[ids[1]]]) == before


def test_resume_continues_the_projector_exactly(tiny_model, small_news, tmp_path):
    """The projector is trained state like the adapter: a run resumed from a checkpoint ends with the same
    adapter and the same fusion weights as the run that went through."""
    from conftest import run_settings
    from safetensors.torch import load_file

    from recpeft.config import build_config
    from recpeft.training.trainer import train

    flags = {"domain": "news", "max_steps": 12, "batch_size": 4, "lr": 0.02, "eval_every": 4, "eval_samples": 8,
             "test_samples": 8, "patience": 0, "lora_dropout": 0.1, "threads": 1, "checkpoint_every": 4,
             "keep_checkpoints": 5, "fusion": "cf", "fusion_dim": 8}
    values = run_settings(flags, tiny_model, small_news, tmp_path)
    train(build_config(**values), show_progress=False)
    files = ("adapter_model.safetensors", "fusion.safetensors")
    first = {f: load_file(str(tmp_path / "out" / f)) for f in files}
    assert any(k.startswith("projector") for k in first["fusion.safetensors"])
    (run,) = (tmp_path / "runs" / "news").iterdir()
    # the last iterate too (the saved adapter is the best step, which may be the untrained one on 8 pairs)
    last = load_file(str(run / "checkpoint-12" / "weights.safetensors"))
    out_layer = [k for k in last if "recpeft_fusion.projector.2.weight" in k]
    assert out_layer and last[out_layer[0]].abs().sum() > 0  # the zero-initialised output layer was trained
    train(build_config(**values, resume=str(run / "checkpoint-8")), show_progress=False)
    for f in files:
        again = load_file(str(tmp_path / "out" / f))
        assert set(again) == set(first[f])
        for k in again:
            torch.testing.assert_close(again[k], first[f][k], atol=1e-6, rtol=0, msg=k)
    again = load_file(str(run / "checkpoint-12" / "weights.safetensors"))
    for k in last:
        torch.testing.assert_close(again[k], last[k], atol=1e-6, rtol=0, msg=k)


def test_embedded_sample_modality_is_the_default_feature_file_and_errors_are_clean(tmp_path):
    """--item-features sample reads the sample's synthetic modality (one vector per item); with --data it is
    refused, and a bad feature file stops `recpeft train` with exit 2 before any model loads or file is written."""
    from recpeft.config import build_config
    from recpeft.data import load_data
    from recpeft.fusion.fusion import Fusion

    data = load_data("news", None, None)
    fusion = Fusion.for_run(build_config(None, fusion="file", item_features="sample"), data)
    assert set(fusion.rows) == set(data.items) and fusion.vectors.dim == 16
    with pytest.raises(UserError, match="embedded sample's"):
        Fusion.for_run(build_config(None, fusion="file", item_features="sample", data="x"), data)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    result = subprocess.run([sys.executable, "-m", "recpeft", "train", "--fusion", "file", "--item-features",
                             str(tmp_path / "bad.npz"), "--model", "nope", "--output-dir", str(tmp_path / "out"),
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "bad.npz" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_recpeft_eval_scores_a_fusion_adapter_with_its_item_tokens(fused_run):
    from recpeft.evaluation.evaluate import evaluate

    result, folder = fused_run
    report = evaluate(str(folder), split="test", limit=4, write=False, show_progress=False, threads=1)
    assert report.metrics["ndcg@10"] == pytest.approx(result.metrics["test_ndcg@10"], abs=1e-6)


@pytest.mark.parametrize("method", ["adalora", "adapter"])
def test_every_method_trains_with_fusion_and_shares_a_base_with_a_plain_adapter(method, tiny_task_model,
                                                                                  tiny_adapters, tmp_path):
    """AdaLoRA and the bottleneck Adapter train their projector too; loaded next to a text-only adapter on one
    base, each scores as it does alone (the fused embedding switches with the adapter)."""
    import recpeft
    from recpeft.config import build_config
    from recpeft.data import load_data
    from recpeft.training.trainer import train

    cfg = build_config(None, domain="video", model=str(tiny_task_model), task="ranking", method=method,
                       fusion="cf", fusion_dim=8, max_steps=4, eval_every=4, batch_size=4, eval_samples=4,
                       test_samples=4, negatives=5, patience=0, threads=1, lr=0.05, init_r=6, target_r=2,
                       tinit=0, tfinal=1, reduction_factor=4, runs_dir=str(tmp_path / "runs"),
                       output_dir=str(tmp_path / "out"))
    result = train(cfg, show_progress=False)
    assert json.loads((tmp_path / "out" / "recpeft.json").read_text())["fusion"]["source"] == "cf:als"
    data = load_data("video", None, None)
    history = [(data.items[i], True) for i in sorted(data.items)[:3]]
    items = [data.items[i] for i in sorted(data.items)[3:9]]
    alone = recpeft.load(tmp_path / "out").score(history, items)
    plain_alone = recpeft.load(tiny_adapters["news"]).score(["a"], ["b", "c"])
    both = recpeft.load_many({"fused": tmp_path / "out", "plain": tiny_adapters["news"]})
    for _ in range(2):  # switching back and forth
        assert both["fused"].score(history, items) == pytest.approx(alone, abs=1e-6)
        assert both["plain"].score(["a"], ["b", "c"]) == pytest.approx(plain_alone, abs=1e-6)
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("recpeft_fusion.projector" in n for n in trained) and any("recpeft_fusion" not in n for n in trained)


def test_http_api_serves_a_fusion_adapter_by_item_id(fused_run):
    """`recpeft serve`: items sent with their item_id get their vectors, and the scores are the Python API's."""
    from fastapi.testclient import TestClient

    import recpeft
    from recpeft.data import load_data
    from recpeft.serving.http import create_app

    _, folder = fused_run
    data = load_data("video", None, None)
    items = list(data.items.values())
    history, candidates = items[:3], items[3:9]
    body = lambda with_ids: {  # noqa: E731
        "domain": "video",
        "history": [{"title": i.title, "category": i.category, **({"item_id": i.item_id} if with_ids else {})}
                    for i in history],
        "items": [{"title": i.title, "category": i.category, **({"item_id": i.item_id} if with_ids else {})}
                  for i in candidates]}
    recs = recpeft.load_many({"video": folder})
    torch.manual_seed(0)  # a non-zero projector (the saved adapter may be the untrained one), so ids matter
    torch.nn.init.normal_(recs["video"].fusion.module.projector[-1].weight)
    with TestClient(create_app(recs)) as client:
        r = client.post("/v1/score", json=body(True))
        assert r.status_code == 200, r.text
        want = recs["video"].score(history, candidates)
        assert r.json()["scores"] == pytest.approx(want, abs=1e-6)
        bare = client.post("/v1/score", json=body(False)).json()["scores"]  # titles only: the unknown vector
    assert bare != pytest.approx(want, abs=1e-4)


def test_cached_prefix_gives_fusion_its_history_context(tiny_model, monkeypatch):
    """Scored through a cached prefix, the target's token still sees the prefix's items: the scores equal a full
    forward of prefix + suffix, and differ without the prefix's context."""
    import contextlib

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import recpeft.serving.prefix
    from recpeft.fusion.module import ItemFusion, install
    from recpeft.fusion.tokens import MARKER, FusionTokenizer
    from recpeft.serving.prefix import cached_answer_logits, cached_answer_logits_many, naive_answer_logits
    from recpeft.tasks.prompts import answer_token_ids

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    base = AutoTokenizer.from_pretrained(tiny_model)
    emb = model.get_input_embeddings()
    fusion = ItemFusion(torch.randn(6, 4), emb.embedding_dim, tokens=2, context="history", scale=1.0)
    torch.nn.init.normal_(fusion.projector[-1].weight, std=3.0)
    install(model, fusion)
    tok = FusionTokenizer(base, emb.num_embeddings, 2)
    prefix = tok("the user liked a" + MARKER.format(3) + " film about" + MARKER.format(5),
                 add_special_tokens=False)["input_ids"]
    suffixes = [tok(t, add_special_tokens=False)["input_ids"]
                for t in ("news" + MARKER.format(1), "a b" + MARKER.format(2) + " story", "yes")]
    answers = answer_token_ids(base)
    cached = cached_answer_logits(model, prefix, suffixes, answers, base.pad_token_id)
    with torch.no_grad():
        naive = naive_answer_logits(model, prefix, suffixes, answers, base.pad_token_id)
    assert torch.allclose(cached, naive, atol=1e-4)
    # several requests at once: right-padded prefixes of different lengths, each suffix reading its own
    other = tok("a" + MARKER.format(4) + " story", add_special_tokens=False)["input_ids"]
    both = cached_answer_logits_many(model, [(prefix, suffixes), (other, suffixes[:2])], answers, base.pad_token_id)
    assert torch.allclose(both[0], naive, atol=1e-4)
    with torch.no_grad():
        other_naive = naive_answer_logits(model, other, suffixes[:2], answers, base.pad_token_id)
    assert torch.allclose(both[1], other_naive, atol=1e-4)
    # the prefix is the context of that forward only: cleared after it, even when it fails
    from recpeft.fusion import module

    with pytest.raises(RuntimeError), module.prefix_context(model, torch.tensor([prefix])):
        assert module._PREFIX.get()[0] is emb
        raise RuntimeError("a cancelled request")
    assert module._PREFIX.get() == (None, None)
    monkeypatch.setattr(recpeft.serving.prefix, "prefix_context", lambda model, ids: contextlib.nullcontext())
    blind = cached_answer_logits(model, prefix, suffixes, answers, base.pad_token_id)
    assert not torch.allclose(blind[:2], naive[:2], atol=1e-3)
    assert torch.allclose(blind[2], naive[2], atol=1e-4)  # the suffix without an item needs no context


def test_untrained_tokens_are_the_anchor_a_word_like_embedding(tiny_model, tmp_path):
    """Attached to a model, the untrained projector gives every item the anchor: the mean word direction at the
    embeddings' RMS (a model RMS-normalises its inputs, so only a token's direction counts). Training moves the
    tokens away from it, which token_scale measures. A fusion file saved before the anchor loads with none."""
    from transformers import AutoModelForCausalLM

    from recpeft.fusion.fusion import Fusion
    from recpeft.fusion.vectors import ItemVectors

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    words = model.get_input_embeddings().weight[:8192].detach()
    fusion = Fusion(ItemVectors(["a", "b", "c"], torch.randn(3, 4), "file", "f" * 16), context="history")
    module = fusion.attach(model)
    tokens = module(torch.tensor([0, 1, 3]))
    rms = float(words.pow(2).mean().sqrt())
    assert torch.allclose(tokens, module.anchor.expand_as(tokens))
    assert float(module.anchor.pow(2).mean().sqrt()) == pytest.approx(rms, rel=1e-4)
    assert torch.nn.functional.cosine_similarity(module.anchor, words.mean(0), dim=0) > 0.999
    assert module.token_scale() == 0.0
    torch.nn.init.normal_(module.projector[-1].weight)
    assert module.token_scale() > 0.0
    fusion.save(tmp_path)
    from safetensors.torch import load_file, save_file

    saved = load_file(str(tmp_path / "fusion.safetensors"))
    assert torch.equal(saved["anchor"], module.anchor)
    record = fusion.record()
    loaded = Fusion.load(tmp_path, record).module
    assert torch.equal(loaded.anchor, module.anchor)
    assert torch.allclose(loaded(torch.tensor([1, 2])), module(torch.tensor([1, 2])))
    del saved["anchor"]  # a fusion adapter from before the anchor
    save_file(saved, str(tmp_path / "fusion.safetensors"), metadata={"item_ids": json.dumps(["a", "b", "c"])})
    old = Fusion.load(tmp_path, {**record, "features": None}).module
    assert torch.equal(old.anchor, torch.zeros_like(module.anchor))


def test_a_record_that_does_not_fit_its_fusion_weights_is_a_clean_error(tmp_path):
    """A recpeft.json whose fusion context was edited (the projector's input width no longer fits): one clear
    error naming the file, not torch's size-mismatch traceback."""
    from recpeft.fusion.fusion import Fusion
    from recpeft.fusion.module import ItemFusion
    from recpeft.fusion.vectors import ItemVectors

    fusion = Fusion(ItemVectors(["a", "b"], torch.randn(2, 4), "file", "f" * 16), context="history")
    fusion.module = ItemFusion(fusion.vectors.vectors, hidden=8, context="history")
    fusion.save(tmp_path)
    record = {**fusion.record(), "features": None}
    assert Fusion.load(tmp_path, record).module.projector[0].in_features == 8
    with pytest.raises(UserError, match="do not fit their record: size mismatch") as err:
        Fusion.load(tmp_path, {**record, "context": "none"})
    assert "fusion.safetensors" in str(err.value)
