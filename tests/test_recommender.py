"""The Python API: scoring through the cached prefix equals the naive path, hot-swap equals solo loads,
ratings, generation and the user errors."""

import json
import shutil

import pytest
import torch

import recpeft
from recpeft.data.formats.csvdir import load_sample
from recpeft.data.schema import Item
from recpeft.errors import UserError
from recpeft.methods import load_adapter
from recpeft.models.load import load_base
from recpeft.serving.prefix import SENTINEL, split_prompt
from recpeft.serving.recommender import as_history

ITEMS = list(load_sample("news").items.values())
HISTORY = [ITEMS[0], (ITEMS[1], False), (ITEMS[2], 4.0), ITEMS[3].title, (ITEMS[4].title, 2)]


@pytest.mark.parametrize("name", ["news", "video", "ecommerce"])  # lora, adalora, adapter
def test_cached_prefix_equals_naive_forward(name, tiny_adapters):
    rec = recpeft.load(tiny_adapters[name])
    cands = ITEMS[5:45]  # titles of different lengths: padded batches
    cached = rec.score(HISTORY, cands, batch_size=16)
    naive = rec.score(HISTORY, cands, naive=True)
    assert max(abs(a - b) for a, b in zip(cached, naive)) < 1e-4
    assert len(set(round(p, 6) for p in cached)) > 1  # the items really get different scores


@pytest.mark.parametrize("name", ["news", "video", "ecommerce"])
def test_scores_match_plain_load_adapter_and_differ_from_base(name, tiny_adapters, tiny_task_model):
    """Through recpeft.load (AdaLoRA converted to LoRA, bottleneck switched in) = load_adapter on a fresh base."""
    rec = recpeft.load(tiny_adapters[name])
    split = rec._preference_split(HISTORY)
    rows = [split.prefix_ids + split.suffix_ids(rec.tokenizer, i.text()) for i in ITEMS[5:10]]
    base, tok, _ = load_base(str(tiny_task_model), bits=32)
    with torch.no_grad():
        base_logits = torch.stack([base(input_ids=torch.tensor([r])).logits[0, -1, rec.answer_ids] for r in rows])
        model = load_adapter(base, tiny_adapters[name], tok).eval()
        want = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1, rec.answer_ids] for r in rows])
    got = torch.tensor(rec.score(HISTORY, ITEMS[5:10]))
    torch.testing.assert_close(got, torch.softmax(want, -1)[:, 1], atol=1e-5, rtol=0)
    assert (got - torch.softmax(base_logits, -1)[:, 1]).abs().max() > 1e-3  # the adapter matters


def test_load_many_equals_each_adapter_alone(tiny_adapters):
    recs = recpeft.load_many(tiny_adapters)
    assert set(recs) == set(tiny_adapters)
    cands = ITEMS[10:30]
    # interleaved calls: every switch (lora -> bottleneck -> adalora -> lora ...) must restore the right state
    order = ["news", "ecommerce", "video", "news2", "ecommerce", "news", "video"]
    shared = [(name, recs[name].score(HISTORY, cands)) for name in order]
    for name, probs in shared:
        alone = recpeft.load(tiny_adapters[name]).score(HISTORY, cands)
        assert max(abs(a - b) for a, b in zip(probs, alone)) < 1e-5, name
    # one base model: every recommender calls the same module
    assert len({id(r.bank.model) for r in recs.values()}) == 1
    assert shared[0][1] != shared[3][1]  # two LoRA adapters, different outputs


def test_rank_orders_by_score_and_keeps_k(tiny_adapters):
    rec = recpeft.load(tiny_adapters["news"])
    cands = ITEMS[5:25]
    ranked = rec.rank(HISTORY, cands, k=5)
    scores = dict(zip([c.item_id for c in cands], rec.score(HISTORY, cands)))
    assert len(ranked) == 5
    assert [s for _, s in ranked] == sorted(scores.values(), reverse=True)[:5]
    assert all(abs(scores[i.item_id] - s) < 1e-6 for i, s in ranked)
    assert rec.rank(HISTORY, ["a title", "another title"], k=10)[0][0].title in ("a title", "another title")


def test_rating_generation_and_history_forms(tiny_adapters):
    rec = recpeft.load(tiny_adapters["news"])
    r = rec.predict_rating(HISTORY, ITEMS[9])
    assert 1.0 <= r <= 5.0
    assert r != rec.predict_rating([(ITEMS[0], 1), (ITEMS[1], 1)], ITEMS[9])  # the history is read
    text = rec.interests(HISTORY)
    assert isinstance(text, str) and text
    assert isinstance(rec.pitch(HISTORY, ITEMS[9]), str)
    h = as_history(HISTORY)
    assert [x.liked for x in h] == [True, False, True, True, False] and h[2].rating == 4.0
    assert rec.history_len == 6
    with pytest.raises(UserError, match="rating from 1 to 5"):
        as_history([("x", 7)])


def test_prefix_split_matches_joint_tokenisation_on_word_tokenizer(tiny_adapters):
    rec = recpeft.load(tiny_adapters["news"])
    split = rec._preference_split(HISTORY)
    from recpeft.tasks.prompts import PreferencePrompt, render, user_message

    for item in ITEMS[:10]:
        prompt = PreferencePrompt([ITEMS[0], ITEMS[2], Item(ITEMS[3].title, ITEMS[3].title)],
                                  [ITEMS[1], Item(ITEMS[4].title, ITEMS[4].title)], item)
        joint = rec.tokenizer(render(rec.tokenizer, user_message(prompt, rec.domain)), add_special_tokens=False)
        assert split.prefix_ids + split.suffix_ids(rec.tokenizer, item.text()) == joint["input_ids"]
    with pytest.raises(ValueError):
        split_prompt(rec.tokenizer, "no sentinel")
    assert split_prompt(rec.tokenizer, f"a: {SENTINEL} b").head == " "


def test_errors_missing_files_mismatched_base_empty_candidates(tiny_adapters, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_adapters["news"], broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="missing adapter_model.safetensors"):
        recpeft.load(broken)
    other = tmp_path / "other"
    shutil.copytree(tiny_adapters["news"], other)
    meta = json.loads((other / "recpeft.json").read_text())
    meta["base_model"]["config_fingerprint"] = "0123456789abcdef"
    (other / "recpeft.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        recpeft.load(other)
    assert meta["base_model"]["name"] in str(err.value) and "0123456789abcdef" in str(err.value)
    meta["base_model"]["fingerprint"] = "ffffffffffffffff"
    (other / "recpeft.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="different base models"):
        recpeft.load_many({"news": tiny_adapters["news"], "other": other})
    rec = recpeft.load(tiny_adapters["news"])
    with pytest.raises(UserError, match="candidate list is empty"):
        rec.rank(HISTORY, [], k=3)
    with pytest.raises(UserError, match="unknown domain 'sports'"):
        recpeft.load_many({"news": tiny_adapters["news"]})["sports"]


def test_docs_python_example_runs(tiny_adapters, tmp_path, monkeypatch, capsys):
    """The load_many example of docs/python-api.md (the README's own Python block: tests/test_readme.py)."""
    import re

    from conftest import ROOT

    text = (ROOT / "docs" / "python-api.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "recpeft.load_many" in b)
    (tmp_path / "adapters").mkdir()
    for name in ("news", "video"):
        (tmp_path / "adapters" / name).symlink_to(tiny_adapters[name])
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/python-api.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and out[0].startswith("[") and "Item(" in out[1]


def test_length_groups_bound_padding_and_batch_size():
    from recpeft.serving.prefix import length_groups

    lengths = [13, 20, 14, 16, 15, 13, 18, 19, 17, 14, 30, 16] * 9
    groups = length_groups(lengths, batch_size=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row once
    assert all(len(g) <= 8 for g in groups)
    assert all(max(lengths[i] for i in g) <= 1.1 * min(lengths[i] for i in g) for g in groups)
    computed = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert computed <= 1.1 * sum(lengths)
    assert length_groups([5] * 10, batch_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("folder_name", ["news-v1.2", "my adapter", "nouvelles-é-ß-新闻", "a.b.c"])
def test_a_folder_name_never_matters(folder_name, tiny_adapters, tmp_path):
    """peft refuses adapter names with "."; recpeft names adapters inside peft itself (issue 14)."""
    cands = ITEMS[10:20]
    want = recpeft.load(tiny_adapters["news"]).score(HISTORY, cands)
    renamed = tmp_path / folder_name
    shutil.copytree(tiny_adapters["news"], renamed)
    assert recpeft.load(renamed).score(HISTORY, cands) == pytest.approx(want, abs=1e-6)
    # several such names on one base, with the AdaLoRA and bottleneck adapters beside it
    other = tmp_path / f"{folder_name}.video"
    shutil.copytree(tiny_adapters["video"], other)
    recs = recpeft.load_many({folder_name: renamed, other.name: other, "x.adapter": tiny_adapters["ecommerce"]})
    assert recs[folder_name].score(HISTORY, cands) == pytest.approx(want, abs=1e-6)
    assert set(recs) == {folder_name, other.name, "x.adapter"}
