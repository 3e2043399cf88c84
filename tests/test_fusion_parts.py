"""Item fusion's parts (--fusion), without a training run: the item markers, the fused embedding and its
projector, where the item vectors come from (CF on the training period, item stats, feature files), config
errors, the projector's own learning rate and clipping, and the history context."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recpeft.errors import UserError


def test_tokenizer_writes_markers_as_virtual_ids(tiny_task_model):
    from transformers import AutoTokenizer

    from recpeft.data.schema import Item
    from recpeft.fusion.tokens import FusionTokenizer, mark

    base = AutoTokenizer.from_pretrained(tiny_task_model)
    tok = FusionTokenizer(base, offset=1000, tokens=2)
    plain = "Yes No ; Probe"
    assert tok(plain, add_special_tokens=False)["input_ids"] == base(plain, add_special_tokens=False)["input_ids"]
    text = mark(Item("7", "Yes"), 3).text() + " No"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    yes, no = (base(w, add_special_tokens=False)["input_ids"] for w in ("Yes", "No"))
    assert ids == yes + [1000 + 3 * 2, 1000 + 3 * 2 + 1] + no
    assert tok.decode(ids) == base.decode(yes + no)
    assert tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].tolist() == [ids]


def test_fused_embedding_places_projected_vectors_and_trains_only_the_projector():
    from recpeft.fusion.module import FusedEmbedding, ItemFusion, install

    torch.manual_seed(0)
    model = torch.nn.Module()
    emb = torch.nn.Embedding(10, 4)
    emb.weight.requires_grad_(False)
    model.get_input_embeddings = lambda: emb
    fusion = ItemFusion(torch.randn(3, 5), hidden=4, tokens=2, projector="linear")
    install(model, fusion)
    assert isinstance(emb, FusedEmbedding)
    ids = torch.tensor([[1, 10 + 2 * 2 + 1, 2, 10 + 0]])  # a real id, item row 2 token 1, a real id, unknown token 0
    out = emb(ids)
    assert torch.equal(out[0, 0], emb.weight[1]) and torch.equal(out[0, 2], emb.weight[2])
    assert torch.allclose(out[0, 1], fusion(torch.tensor([2]))[0, 1])
    assert torch.allclose(out[0, 3], fusion(torch.tensor([0]))[0, 0])
    out.sum().backward()
    assert fusion.projector.weight.grad is not None and fusion.unknown.grad is not None
    assert emb.weight.grad is None
    assert torch.equal(emb(torch.tensor([[1, 2]])), emb.weight[[1, 2]].unsqueeze(0))  # no item: a plain lookup


@pytest.mark.parametrize("projector", ["mlp", "linear"])
def test_the_soft_token_grows_slowly_whatever_the_vectors_scale(projector):
    """The table is standardised per dimension, and one Adam step at lr 1e-3 moves the zero-initialised token by
    about a percent of a word embedding (scale 1), not by ~lr x fan-in (0.3 with the MLP's 576 inputs)."""
    from recpeft.fusion.module import ItemFusion

    torch.manual_seed(0)
    for spread in (0.05, 50.0):  # ALS-sized factors and an unnormalised feature file
        fusion = ItemFusion(spread * torch.randn(40, 16) + 3.0, hidden=576, projector=projector, scale=1.0)
        assert fusion.table.mean(0).abs().max() < 1e-4 and (fusion.table.std(0, unbiased=False) - 1).abs().max() < 1e-4
        opt = torch.optim.Adam(fusion.parameters(), lr=1e-3)
        rows = torch.arange(1, 41)
        (fusion(rows) * torch.randn(576)).sum().backward()
        opt.step()
        rms = fusion(rows).pow(2).mean().sqrt().item()
        assert 1e-4 < rms < 0.03, (spread, rms)


def test_collaborative_vectors_come_from_the_training_period_only(tmp_path):
    from recpeft.data import load_data
    from recpeft.fusion.vectors import collaborative
    from recpeft.tasks.examples import ranking_examples

    data = load_data("video", None, None)
    vectors = collaborative(data, "ranking", "als", dim=8, seed=1)
    train_items = {x.item_id for ex in ranking_examples(data, negatives=5, seed=0)["train"] for x in ex.history}
    assert set(vectors.ids) <= train_items | {ex.candidates[0] for ex in ranking_examples(data, 5, 0)["train"]}
    only_later = {ex.candidates[0] for s in ("valid", "test") for ex in ranking_examples(data, 5, 0)[s]} - set(
        x.item_id for x in data.interactions if x.item_id in vectors.ids)
    assert not only_later & set(vectors.ids)
    assert vectors.vectors.shape == (len(vectors.ids), 8)
    again = collaborative(data, "ranking", "als", dim=8, seed=1)
    assert torch.equal(again.vectors, vectors.vectors)  # resume rebuilds the very same table
    bpr = collaborative(data, "ranking", "bpr", dim=8, seed=1)
    assert bpr.source == "cf:bpr" and bpr.vectors.shape[1] == 8


@pytest.mark.parametrize("task, stat", [("preference", "liked"), ("rating", "rating")])
def test_item_stats_append_the_training_periods_count_and_rate_to_the_factors(task, stat):
    from recpeft.baselines.base import train_interactions
    from recpeft.data import load_data
    from recpeft.fusion.vectors import collaborative

    data = load_data("video", None, None)
    plain = collaborative(data, task, "als", dim=8, seed=1)
    both = collaborative(data, task, "als", dim=8, seed=1, item_stats=True)
    assert both.source == "cf:als+stats" and both.dim == 10 and both.ids == plain.ids
    assert both.fingerprint != plain.fingerprint
    assert torch.equal(both.vectors[:, :8], plain.vectors)  # standardised per column: the factors are unchanged
    events = [x for x in train_interactions(data, task) if x.item_id in set(both.ids)]
    values = {i: [float(x.rating) if stat == "rating" else float(x.liked) for x in events if x.item_id == i]
              for i in both.ids}
    counts = torch.tensor([float(np.log1p(len(values[i]))) for i in both.ids])
    g = sum(map(sum, values.values())) / sum(map(len, values.values()))
    rates = torch.tensor([(sum(v) + 5 * g) / (len(v) + 5) for v in values.values()])
    for column, raw in ((8, counts), (9, rates)):  # hand-computed, then standardised like every column
        assert torch.allclose(both.vectors[:, column], (raw - raw.mean()) / raw.std(), atol=1e-4)


def test_feature_files_are_read_without_pickle_and_checked(tmp_path):
    from safetensors.numpy import save_file

    from recpeft.fusion.vectors import from_file

    vec = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    save_file({"vectors": vec}, str(tmp_path / "f.safetensors"), metadata={"item_ids": json.dumps(["a", "b", "c"])})
    np.savez(tmp_path / "f.npz", item_ids=np.array(["a", "b", "c"]), vectors=vec)
    a, b = from_file(tmp_path / "f.safetensors"), from_file(tmp_path / "f.npz")
    assert a.ids == b.ids == ["a", "b", "c"] and a.fingerprint == b.fingerprint and torch.equal(a.vectors, b.vectors)
    np.savez(tmp_path / "obj.npz", item_ids=np.array(["a", 1], dtype=object), vectors=vec[:2])
    np.savez(tmp_path / "short.npz", item_ids=np.array(["a", "b"]), vectors=vec)
    np.savez(tmp_path / "dup.npz", item_ids=np.array(["a", "a", "b"]), vectors=vec)
    np.savez(tmp_path / "nan.npz", item_ids=np.array(["a", "b", "c"]), vectors=vec * np.nan)
    (tmp_path / "f.npy").write_bytes(b"")
    for name, words in (("obj.npz", "numeric vectors and string ids only"), ("short.npz", "2 item ids for 3"),
                        ("dup.npz", "not unique"), ("nan.npz", "finite"), ("f.npy", "use .safetensors or .npz"),
                        ("missing.npz", "not found")):
        with pytest.raises(UserError, match=words) as err:
            from_file(tmp_path / name)
        assert name in str(err.value)


@pytest.mark.parametrize("flags, words", [
    ({"fusion": "file"}, "needs --item-features"),
    ({"item_features": "x.npz"}, "only with --fusion file"),
    ({"fusion": "file", "item_features": "x.npz", "fusion_item_stats": True}, "only with --fusion cf"),
    ({"fusion": "cf", "dp_epsilon": 8.0}, "does not support --fusion"),
    ({"fusion": "nope"}, "unknown fusion 'nope'"),
])
def test_config_errors(flags, words):
    from recpeft.config import build_config

    with pytest.raises(UserError, match=words):
        build_config(None, **flags)


def test_a_scaled_embedding_subclass_keeps_its_own_lookup():
    """Gemma scales its embedding lookups (an nn.Embedding subclass): fusion keeps that forward for real ids."""
    from recpeft.fusion.module import FusedEmbedding, ItemFusion, embedding_stats, install

    class Scaled(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 3.0

    model = torch.nn.Module()
    emb = Scaled(10, 4)
    model.get_input_embeddings = lambda: emb
    scale, anchor = embedding_stats(model)
    assert scale == pytest.approx(3.0 * float(emb.weight.pow(2).mean().sqrt()), rel=1e-5)
    assert torch.nn.functional.cosine_similarity(anchor, emb.weight.mean(0), dim=0) > 0.999  # through its lookup
    fusion = ItemFusion(torch.randn(2, 3), hidden=4, scale=scale)
    install(model, fusion)
    assert isinstance(emb, (FusedEmbedding, Scaled))
    out = emb(torch.tensor([[1, 10 + 1]]))
    assert torch.allclose(out[0, 0], emb.weight[1] * 3.0)
    assert torch.allclose(out[0, 1], fusion(torch.tensor([1]))[0, 0])


def test_the_projector_learns_at_its_own_rate():
    """--fusion-lr-scale: the fusion parameters get lr x scale in groups of their own; without fusion the
    optimiser is the one it always was (matrices decayed, vectors not, one lr)."""
    from recpeft.config import TrainConfig
    from recpeft.training.setup import make_optimizer, split_fusion

    lora = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    proj = [torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))]
    cfg = TrainConfig(lr=1e-3, fusion_lr_scale=0.1, weight_decay=0.01)
    groups = make_optimizer(split_fusion(lora + proj, proj), cfg).param_groups
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_id[id(lora[0])] == (1e-3, 0.01) and by_id[id(lora[1])] == (1e-3, 0.0)
    assert by_id[id(proj[0])] == pytest.approx((1e-4, 0.01)) and by_id[id(proj[1])] == pytest.approx((1e-4, 0.0))
    plain = make_optimizer(split_fusion(lora), cfg).param_groups
    assert [(len(g["params"]), g["lr"], g["weight_decay"]) for g in plain] == [(1, 1e-3, 0.01), (1, 1e-3, 0.0)]


def test_the_projector_and_the_adapter_are_clipped_apart():
    """--max-grad-norm clips each group on its own: a projector gradient 60x the adapter's must not shrink the
    adapter's gradient (one joint norm would)."""
    from accelerate import Accelerator

    from recpeft.training.setup import clip_gradients, split_fusion

    lora, proj = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    lora.grad, proj.grad = torch.full((4,), 0.25), torch.full((4,), 15.0)  # norms 0.5 and 30
    norms = clip_gradients(Accelerator(cpu=True), split_fusion([lora, proj], [proj]), 1.0)
    assert [float(n) for n in norms] == pytest.approx([0.5, 30.0])
    assert lora.grad.norm().item() == pytest.approx(0.5) and proj.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_history_context_is_the_mean_of_the_items_before():
    """--fusion-context history: each item's tokens read the mean vector of the items that start before it in the
    sequence (an unknown item counts with the learned unknown vector), whatever its number of tokens."""
    from recpeft.fusion.module import ItemFusion

    torch.manual_seed(0)
    fusion = ItemFusion(torch.randn(5, 3), hidden=4, tokens=2, projector="linear", context="history")
    torch.nn.init.normal_(fusion.unknown)
    # a real token, item row 1 (tokens 0 and 1), a real token, the unknown item, item row 4
    offsets = torch.tensor([[-1, 2, 3, -1, 0, 1, 8, 9]])
    h = fusion.history(offsets)[0]
    v1, unknown, _ = fusion.vectors(torch.tensor([1, 0, 4]))
    assert torch.equal(h[1], torch.zeros(3)) and torch.equal(h[2], torch.zeros(3))
    assert torch.allclose(h[4], v1) and torch.allclose(h[5], v1)
    assert torch.allclose(h[6], (v1 + unknown) / 2) and torch.allclose(h[7], (v1 + unknown) / 2)
    # a prompt cut from the left that keeps only an item's second token: that item is not in the mean, nor taken out
    cut = fusion.history(torch.tensor([[3, -1, 8, 9]]))[0]
    assert torch.equal(cut[0], torch.zeros(3)) and torch.equal(cut[2], torch.zeros(3))
    # the projector reads [v, v * h]: the same item after another history gets another token
    assert fusion.projector.in_features == 6
    torch.nn.init.normal_(fusion.projector.weight)
    item = torch.tensor([4])
    assert not torch.allclose(fusion(item, h[4:5]), fusion(item, h[6:7]))
    assert torch.allclose(fusion(item), fusion(item, torch.zeros(1, 3)))
    # how loud the tokens are against a word embedding: zero untrained, the tokens' RMS / the embedding RMS after
    fresh = ItemFusion(torch.randn(5, 3), hidden=4, tokens=2, projector="linear", context="history", scale=2.0)
    assert fresh.token_scale() == 0.0
    torch.nn.init.normal_(fresh.projector.weight)
    rows = torch.arange(1, 6)
    want = fresh(rows, fresh.vectors(rows.roll(1))).detach().pow(2).mean().sqrt() / 2.0
    assert fresh.token_scale() == pytest.approx(float(want), rel=1e-5) and want > 0
