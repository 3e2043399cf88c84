"""The task layer: every task trains (loss drops) and evaluates; the pieces each one rests on."""

import math

import pytest
import torch

from recpeft.config import TrainConfig
from recpeft.data.formats.csvdir import load_sample
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.domains import get_domain
from recpeft.errors import UserError
from recpeft.evaluation.metrics import ranking_metrics, set_metrics
from recpeft.models.load import load_base
from recpeft.tasks import get_task
from recpeft.tasks.batches import collate
from recpeft.tasks.examples import (
    cold_start,
    interests_examples,
    item_categories,
    ranking_examples,
    subsample,
    top_categories,
    train_item_counts,
)
from recpeft.tasks.interests import answer_loss, generate
from recpeft.tasks.ranking import cold_start_metrics
from recpeft.tasks.rating import expected_rating, rating_class
from recpeft.training.trainer import train

# (task, domain, rows per sampled training example, extra config)
CASES = {
    "preference": ("preference", "video", 1, {}),
    "click": ("click", "news", 1, {}),
    "rating": ("rating", "ecommerce", 1, {}),
    "ranking": ("ranking", "ecommerce", 2, {"negatives": 5}),
    # one group (the true item and 3 negatives, scored together) per sampled example
    "ranking_listwise": ("ranking", "ecommerce", 1, {"negatives": 5, "ranking_loss": "listwise", "list_negatives": 3}),
    "profile": ("profile", "video", 2, {"negatives": 5, "profile_from": "genres"}),
    # the LM loss spreads over the whole vocabulary: adapt every projection so a few steps show
    "interests": ("interests", "news", 1, {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"], "lr": 5e-2}),
}


def task_cfg(model, **kw) -> TrainConfig:
    base = dict(model=str(model), max_steps=30, batch_size=8, lr=3e-2, eval_every=30, eval_samples=12,
                test_samples=12, patience=0, lora_dropout=0.0, threads=1, train_samples=8)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("case", list(CASES))
def test_each_task_trains_on_a_few_shots_and_evaluates(case, tiny_task_model):
    task, domain, per_example, extra = CASES[case]
    result = train(task_cfg(tiny_task_model, task=task, domain=domain, **extra), save=False, show_progress=False)
    m = result.metrics
    assert m["task"] == task and m["train_examples"] == 8 * per_example  # --train-samples 8
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.05, (first, last)  # 8 examples seen again and again: the loss must fall
    key = m["main_metric"]
    assert not math.isnan(m[f"test_{key}"]) and not math.isnan(m[f"valid_{key}_base"])
    assert m["valid_n"] == 12 and m["test_n"] == 12
    assert [h["step"] for h in result.history] == [0, 30]
    assert result.test_outputs  # per-example outputs come back for plots


def test_train_samples_is_a_seeded_subset(tiny_task_model):
    data, domain = load_sample("video"), get_domain("video")
    _, tok, _ = load_base(str(tiny_task_model))
    task = get_task("preference", data, domain, tok, TrainConfig(train_samples=16))
    rows = task.train_rows(16)
    again = get_task("preference", data, domain, tok, TrainConfig()).train_rows(16)
    assert len(rows) == 16 and [r.input_ids for r in rows] == [r.input_ids for r in again]
    other_seed = get_task("preference", data, domain, tok, TrainConfig(seed=1)).train_rows(16)
    assert [r.input_ids for r in rows] != [r.input_ids for r in other_seed]
    assert len(task.train_rows(0)) == len(task.splits()["train"])


def test_ranking_candidates_are_the_baselines_candidates(tiny_task_model):
    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    _, tok, _ = load_base(str(tiny_task_model))
    cfg = TrainConfig(negatives=7, seed=3)
    first = get_task("ranking", data, domain, tok, cfg).eval_set("test", 10)
    second = get_task("ranking", data, domain, tok, cfg).eval_set("test", 10)
    expected = subsample(ranking_examples(data, negatives=7, seed=3)["test"], 10, 3)
    assert first.examples == second.examples == expected
    assert [r.input_ids for r in first.rows] == [r.input_ids for r in second.rows]
    assert len(first.rows) == 10 * 8 and [r.label for r in first.rows[:8]] == [1] + [0] * 7
    # row k of an example asks about candidate k: the candidate's text ends its prompt
    ex, tail = first.examples[0], _tail(tok)
    for k, row in enumerate(first.rows[:8]):
        ids = tok(data.items[ex.candidates[k]].text(), add_special_tokens=False)["input_ids"]
        end = len(row.input_ids) - tail
        assert row.input_ids[end - len(ids):end] == ids
    different = get_task("ranking", data, domain, tok, TrainConfig(negatives=7, seed=4)).eval_set("test", 10)
    assert [e.candidates for e in different.examples] != [e.candidates for e in first.examples]


def _tail(tok) -> int:
    """Tokens the prompt template puts after the user message (none without a chat template)."""
    from recpeft.tasks.prompts import render

    text = render(tok, "MARK")
    return len(tok(text[text.index("MARK") + 4:], add_special_tokens=False)["input_ids"])


def test_rating_prediction_is_the_expectation_over_the_digits():
    flat = torch.zeros(1, 5)
    assert expected_rating(flat).item() == pytest.approx(3.0)
    sure = torch.tensor([[0.0, 0.0, 0.0, 0.0, 50.0]])
    assert expected_rating(sure).item() == pytest.approx(5.0)
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0, 0.0]])
    p = torch.softmax(logits, -1)[0].tolist()
    assert expected_rating(logits).item() == pytest.approx(sum((k + 1) * pk for k, pk in enumerate(p)))
    assert [rating_class(r) for r in (1, 2.4, 3, 4.6, 5, 0.2, 7)] == [0, 1, 2, 4, 4, 0, 4]


def test_tasks_refuse_data_they_cannot_use():
    data = load_sample("video")

    class Tok:  # get_task only needs answer ids from a tokenizer for these two tasks
        pass

    with pytest.raises(UserError, match="needs 1-5 ratings"):
        get_task("rating", load_sample("news"), get_domain("news"), Tok(), TrainConfig())
    with pytest.raises(UserError, match="needs click labels"):
        get_task("click", data, get_domain("video"), Tok(), TrainConfig())
    no_categories = RecData("x", {i: Item(i, it.title) for i, it in data.items.items()}, data.interactions)
    with pytest.raises(UserError, match="needs item categories"):
        get_task("interests", no_categories, get_domain("video"), Tok(), TrainConfig())
    with pytest.raises(UserError, match="unknown task"):
        get_task("pitch", data, get_domain("video"), Tok(), TrainConfig())


def test_better_follows_the_main_metric(tiny_task_model):
    data, domain = load_sample("video"), get_domain("video")
    _, tok, _ = load_base(str(tiny_task_model))
    rating, pref = get_task("rating", data, domain, tok, TrainConfig()), get_task("preference", data, domain, tok,
                                                                                 TrainConfig())
    assert rating.better(0.9, 1.0) and not rating.better(1.1, 1.0)
    assert pref.better(0.7, 0.6) and not pref.better(0.5, 0.6)
    assert pref.better(0.5, math.nan) and not pref.better(math.nan, 0.5)


def _toy_data() -> RecData:
    items = {f"i{k}": Item(f"i{k}", f"title {k}", categories=tuple(cat.split("|"))) for k, cat in
             enumerate(["A", "A|B", "B", "C", "C", "D", "A", "B", "D", "C", "A", "B"])}
    seq = {"u1": ["i0", "i1", "i2", "i3", "i6", "i7", "i10", "i11", "i4", "i5"],
           "u2": ["i0", "i1", "i2", "i6", "i7", "i10", "i11", "i3", "i4", "i9"]}
    inter = [Interaction(u, it, t, rating=5.0 if t % 3 else 2.0) for u, its in seq.items() for t, it in enumerate(its)]
    return RecData("toy", items, inter)


def test_cold_start_slice_counts_training_interactions_only():
    data = _toy_data()
    counts = train_item_counts(data)
    # the last two events of each user (valid and test) do not count
    assert counts["i0"] == 2 and counts["i3"] == 2 and not {"i4", "i5", "i9"} & set(counts)
    examples = ranking_examples(data, negatives=1, seed=0)["test"]
    assert [ex.candidates[0] for ex in examples] == ["i5", "i9"]
    assert cold_start(examples, counts) == [True, True]
    assert cold_start(examples, {"i5": 3, "i9": 2}) == [False, True]
    scores = [[0.9, 0.1], [0.2, 0.8]]
    cold = cold_start_metrics(scores, [False, True])
    assert cold["cold_n"] == 1 and cold["cold_hr@1"] == 0.0 and cold["cold_mrr"] == ranking_metrics([[0.2, 0.8]])["mrr"]
    assert cold_start_metrics(scores, [False, False]) == {"cold_n": 0}


def test_cold_eval_set_keeps_only_cold_targets(tiny_task_model):
    data = _toy_data()
    _, tok, _ = load_base(str(tiny_task_model))
    task = get_task("ranking", data, get_domain("video"), tok, TrainConfig(negatives=1, seed=0))
    counts = train_item_counts(data)
    for split in ("valid", "test"):
        cold = task.cold_eval_set(split)
        expected = [ex for ex in ranking_examples(data, 1, 0)[split] if counts.get(ex.candidates[0], 0) <= 2]
        assert cold.examples == expected and all(cold.extra["cold"])
    assert [ex.candidates[0] for ex in task.cold_eval_set("valid").examples] == ["i4", "i4"]


def test_interests_examples_look_only_forward():
    data = _toy_data()
    assert item_categories(data.items["i1"]) == ["A", "B"] and item_categories(Item("x", "t", "Sci-Fi")) == ["Sci-Fi"]
    splits = interests_examples(data, window=3, min_history=2)
    test = {ex.user_id: ex for ex in splits["test"]}
    u1 = test["u1"]
    assert [x.item_id for x in u1.future] == ["i11", "i4", "i5"] and len(u1.history) == 7
    assert u1.truth(data) == {c for x in u1.future if x.liked for c in data.items[x.item_id].categories}
    for ex in splits["train"]:
        assert not ex.future and len(ex.history) <= 10 - 6
    # liked = rating 5 at t % 3 != 0; i1 (A|B) counts for both
    assert top_categories(data, u1.history, 2) == ["B", "A"]


def test_interest_answer_loss_counts_only_answer_tokens(tiny_task_model):
    model, tok, _ = load_base(str(tiny_task_model))
    data, domain = load_sample("news"), get_domain("news")
    task = get_task("interests", data, domain, tok, TrainConfig(history_len=3))
    rows = task.train_rows(3)
    assert len({len(r.input_ids) for r in rows}) > 1 and all(r.label >= 2 for r in rows)
    batched = answer_loss(model, collate(rows, tok.pad_token_id))
    # by hand, one unpadded row at a time, over all answer tokens together
    losses, count = 0.0, 0
    for r in rows:
        ids = torch.tensor([r.input_ids])
        logits = model(input_ids=ids).logits[0, -r.label - 1:-1]
        losses += torch.nn.functional.cross_entropy(logits, ids[0, -r.label:], reduction="sum").item()
        count += r.label
    assert batched.item() == pytest.approx(losses / count, rel=1e-4)
    # the answer is the top categories of the history, then end-of-sequence
    assert rows[0].input_ids[-1] == tok.eos_token_id


def test_batched_left_padded_generation_matches_one_at_a_time(tiny_task_model):
    model, tok, _ = load_base(str(tiny_task_model))
    data, domain = load_sample("news"), get_domain("news")
    rows = get_task("interests", data, domain, tok, TrainConfig()).eval_set("test", 5).rows
    assert len({len(r.input_ids) for r in rows}) > 1
    together = generate(model, tok, rows, batch_size=5, max_new_tokens=6)
    alone = [generate(model, tok, [r], batch_size=1, max_new_tokens=6)[0] for r in rows]
    assert together == alone and all(t for t in together)


def test_interest_scoring_parses_known_categories(tiny_task_model, monkeypatch):
    import recpeft.tasks.interests as interests

    model, tok, _ = load_base(str(tiny_task_model))
    data, domain = load_sample("news"), get_domain("news")
    task = get_task("interests", data, domain, tok, TrainConfig())
    evalset = task.eval_set("test", 3)
    answers = ["Sports, finance, Cooking", "nothing useful", "Politics; Technology\nHealth"]
    monkeypatch.setattr(interests, "generate", lambda *a, **k: answers)
    result = task.evaluate(model, evalset)
    predicted = [{"Sports", "Finance"}, set(), {"Politics", "Technology", "Health"}]
    assert result.outputs["predicted"] == [sorted(p) for p in predicted]
    expected = set_metrics(predicted, evalset.extra["truth"])
    assert {k: result.metrics[k] for k in expected} == expected
    assert result.metrics["no_known_category"] == pytest.approx(1 / 3) and result.metrics["n"] == 3


def test_cached_ranking_evaluation_equals_the_full_prompt_path(tiny_task_model):
    from recpeft.methods import get_method

    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    model, tok, _ = load_base(str(tiny_task_model))
    cfg = TrainConfig(negatives=7, seed=3, lora_dropout=0.0)
    model = get_method("lora").attach(model, cfg, ["q_proj", "v_proj"], 10)
    with torch.no_grad():  # a non-zero adapter, so the check covers the adapted path
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    task = get_task("ranking", data, domain, tok, cfg)
    evalset = task.eval_set("test", 6)
    cached = task.evaluate(model, evalset, cached=True).outputs["scores"]
    full = task.evaluate(model, evalset, cached=False).outputs["scores"]
    assert torch.allclose(torch.tensor(cached), torch.tensor(full), atol=1e-4)
    assert len({round(s, 6) for row in cached for s in row}) > 8  # real, distinct scores


def test_listwise_loss_is_a_softmax_over_each_users_candidates(tiny_task_model):
    """Each group (one user's true item first, then its negatives) stays whole in a batch, and the loss is
    the cross-entropy of the true item under a softmax of the groups' log-odds, computed by hand here."""
    from recpeft.evaluation.scoring import answer_logits
    from recpeft.tasks.batches import EncodedGroup, loader

    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    model, tok, _ = load_base(str(tiny_task_model))
    cfg = TrainConfig(negatives=5, ranking_loss="listwise", list_negatives=3, seed=3)
    task = get_task("ranking", data, domain, tok, cfg)
    groups = task.train_rows(10)
    assert len(groups) == 10 and all(isinstance(g, EncodedGroup) and len(g.rows) == 4 for g in groups)
    assert all([r.label for r in g.rows] == [1, 0, 0, 0] for g in groups)
    pointwise = get_task("ranking", data, domain, tok, TrainConfig(negatives=5, seed=3))
    assert [r.input_ids for r in groups[0].rows[:2]] == [r.input_ids for r in pointwise.train_rows(10)[:2]]
    batch = next(iter(loader(groups, 3, shuffle=True, pad_id=tok.pad_token_id, seed=1)))
    assert batch["group_size"] == 4 and batch["labels"].view(-1, 4).tolist() == [[1, 0, 0, 0]] * 3
    with torch.no_grad():
        logits = answer_logits(model, batch, task.answer_ids)
        odds = (logits[:, 1] - logits[:, 0]).view(3, 4)
        by_hand = -(odds[:, 0] - odds.exp().sum(1).log()).mean()
        assert torch.allclose(task.loss(model, batch), by_hand, atol=1e-6)


@pytest.mark.parametrize("flags, words", [
    ({"ranking_loss": "listwise"}, "trains the ranking task"),
    ({"task": "ranking", "ranking_loss": "listwise", "list_negatives": 30}, "at most negatives"),
])
def test_listwise_settings_are_checked(flags, words):
    from recpeft.config import build_config

    with pytest.raises(UserError, match=words):
        build_config(None, **flags)
