"""Classical baselines: better than chance where they should be, seeded, fitted on the train period only."""

from __future__ import annotations

import json
import random

import pytest
import torch

from recpeft.baselines import REGISTRY, Baseline, FitContext, run_baselines
from recpeft.baselines.base import cold_slice, train_interactions
from recpeft.baselines.gru4rec import GRU4Rec, _Net
from recpeft.baselines.sasrec import SASRec
from recpeft.data.formats.csvdir import load_sample
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.tasks.examples import cold_start, preference_examples, ranking_examples, subsample, train_item_counts

# Small enough for a 1-thread test; the defaults are for real data.
FAST = {"gru4rec": {"dim": 32, "epochs": 1, "pointwise_epochs": 1, "min_steps": 60, "lr": 1e-2, "dropout": 0.0},
        "bpr": {"epochs": 5}}
FAST["sasrec"] = FAST["gru4rec"]


@pytest.fixture(scope="module")
def video() -> RecData:
    return load_sample("video")


def skewed(n_users: int = 60, n_items: int = 40, per_user: int = 8, seed: int = 0) -> RecData:
    """Users pick items with Zipf-like popularity: the popular items are the likely next ones."""
    rng = random.Random(seed)
    items = {f"i{k:02d}": Item(f"i{k:02d}", f"item {k}") for k in range(n_items)}
    weights = [1 / (k + 1) ** 1.5 for k in range(n_items)]
    inter = []
    for u in range(n_users):
        picked: list[int] = []
        while len(picked) < per_user:
            k = rng.choices(range(n_items), weights)[0]
            if k not in picked:
                picked.append(k)
        inter += [Interaction(f"u{u:02d}", f"i{k:02d}", t, click=1) for t, k in enumerate(picked)]
    return RecData("skewed", items, inter)


def cyclic(n_users: int = 60, n_items: int = 40, per_user: int = 10, seed: int = 0) -> RecData:
    """Every user walks the same seeded cycle of items from a random start: the next item follows from the last."""
    rng = random.Random(seed)
    cycle = rng.sample(range(n_items), n_items)
    items = {f"i{k:02d}": Item(f"i{k:02d}", f"item {k}") for k in range(n_items)}
    inter = []
    for u in range(n_users):
        start = rng.randrange(n_items)
        inter += [Interaction(f"u{u:02d}", f"i{cycle[(start + t) % n_items]:02d}", t, click=1) for t in range(per_user)]
    return RecData("cyclic", items, inter)


def without_seconds(results: dict) -> dict:
    return {name: {k: v for k, v in m.items() if not k.endswith("seconds")} for name, m in results.items()}


def test_popularity_beats_random_on_a_skewed_catalogue():
    r = run_baselines(skewed(), "ranking", ["random", "popularity"], negatives=19)
    assert r["popularity"]["test"]["hr@10"] > r["random"]["test"]["hr@10"] + 0.2
    assert r["popularity"]["test"]["ndcg@10"] > r["random"]["test"]["ndcg@10"]


def test_preference_baselines_beat_random_on_the_video_sample(video):
    r = run_baselines(video, "preference", params=FAST)
    assert set(r) == {"random", "popularity", "item_knn", "gru4rec", "sasrec", "logreg"}
    assert r["logreg"]["test"]["auc"] > 0.6  # the sample's tastes are category-driven
    for name in ("popularity", "item_knn", "logreg"):
        assert r[name]["test"]["auc"] > r["random"]["test"]["auc"] + 0.03, name
    assert r["logreg"]["test"]["auc"] > r["popularity"]["test"]["auc"]  # personal features matter here
    for m in r.values():
        assert m["test"]["n"] == m["valid"]["n"] == 600


def test_ranking_baselines_beat_random_on_the_video_sample(video):
    r = run_baselines(video, "ranking", params=FAST)
    assert set(r) == {"random", "popularity", "item_knn", "bpr", "gru4rec", "sasrec"}
    for name in ("popularity", "item_knn", "bpr", "gru4rec", "sasrec"):
        assert r[name]["test"]["hr@10"] > r["random"]["test"]["hr@10"] + 0.05, name
    assert r["item_knn"]["test"]["ndcg@10"] > r["popularity"]["test"]["ndcg@10"]


def test_choice_is_scored_on_the_ranking_tasks_lists(video):
    """A choice adapter asks about the ranking task's candidate lists, so its baselines are ranking's."""
    kw = dict(negatives=9, seed=3, test_limit=40)
    choice = run_baselines(video, "choice", ["popularity", "item_knn"], **kw)
    ranking = run_baselines(video, "ranking", ["popularity", "item_knn"], **kw)
    assert {m: r["test"] for m, r in choice.items()} == {m: r["test"] for m, r in ranking.items()}
    assert choice["item_knn"]["test"]["n"] == 40


def test_rating_baselines_beat_random(video):
    r = run_baselines(video, "rating", ["random", "popularity", "item_knn", "logreg"])
    for name in ("popularity", "item_knn", "logreg"):
        assert r[name]["test"]["rmse"] < r["random"]["test"]["rmse"] - 0.3, name
    assert r["logreg"]["test"]["rmse"] < r["popularity"]["test"]["rmse"]


def test_sasrec_learns_a_cycle():
    """Histories (up to 9 events, history_len 0 = all) longer than max_len 4: scored on their last 4."""
    fast = {**FAST["sasrec"], "dim": 16, "min_steps": 100, "batch_size": 32, "max_len": 4}
    r = run_baselines(cyclic(), "ranking", ["random", "sasrec"], params={"sasrec": fast}, history_len=0)
    assert r["random"]["test"]["ndcg@10"] < 0.4
    assert r["sasrec"]["test"]["ndcg@10"] > 0.8 and r["sasrec"]["test"]["hr@1"] > 0.6


@pytest.mark.parametrize("cls", [GRU4Rec, SASRec])
def test_sequence_encoders_are_causal(cls):
    """The state at position t ignores later items and right padding, in training mode (no dropout) and scoring."""
    torch.manual_seed(0)
    net = _Net(30, 16, 0.0, cls(dim=16, max_len=8, dropout=0.0)._encoder).eval()
    items = torch.randint(1, 31, (3, 8))
    changed = torch.cat([items[:, :5], torch.randint(1, 31, (3, 3))], dim=1)
    padded = torch.cat([items[:, :5], torch.zeros(3, 3, dtype=torch.long)], dim=1)
    feedback = torch.zeros_like(items)
    for grad in (True, False):  # with and without autograd (torch's fused transformer path scores)
        with torch.set_grad_enabled(grad):
            states = net.states(items, feedback)
            for other in (changed, padded, items[:, :5]):
                assert torch.allclose(net.states(other, feedback[:, :other.shape[1]])[:, :5], states[:, :5],
                                      atol=1e-6)
            assert not torch.allclose(net.states(changed, feedback)[:, 5:], states[:, 5:])
            assert torch.isfinite(net.states(torch.zeros_like(items), feedback)).all()  # an empty history


@pytest.mark.parametrize("task", ["preference", "ranking"])
def test_same_seed_same_metrics(video, task):
    small = RecData(video.name, video.items, [x for x in video.interactions if x.user_id < "u0080"])
    first = run_baselines(small, task, params=FAST, seed=3)
    again = run_baselines(small, task, params=FAST, seed=3)
    assert without_seconds(first) == without_seconds(again)
    other = run_baselines(small, task, ["random"], seed=4)
    assert other["random"]["test"] != first["random"]["test"]


class Spy(Baseline):
    """Records what it is given to fit on and scores nothing useful."""

    name, tasks = "spy", ("preference", "ranking", "rating")
    seen: list[FitContext] = []

    def fit(self, ctx):
        Spy.seen.append(ctx)

    scored: list[list] = []

    def score_preference(self, examples):
        Spy.scored.append(list(examples))
        return [0.5] * len(examples)

    score_rating = score_preference

    def score_ranking(self, examples):
        Spy.scored.append(list(examples))
        return [[0.0] * len(e.candidates) for e in examples]


@pytest.fixture
def spy(monkeypatch):
    monkeypatch.setitem(REGISTRY, "spy", Spy)
    Spy.seen, Spy.scored = [], []
    return Spy


def key(x: Interaction) -> tuple:
    return (x.user_id, x.item_id, x.timestamp)


@pytest.mark.parametrize("task", ["preference", "ranking"])
def test_fit_sees_only_the_train_period(video, spy, task):
    run_baselines(video, task, ["spy"])
    ctx = spy.seen[0]
    splits = preference_examples(video) if task == "preference" else ranking_examples(video, seed=42)
    held_out = {(e.user_id, e.target.item_id if task == "preference" else e.candidates[0], e.timestamp)
                for s in ("valid", "test") for e in splits[s]}
    fitted = {key(x) for x in ctx.interactions}
    assert not fitted & held_out
    # ...and it is the whole train period: every interaction not held out (users with few events aside).
    assert len(fitted) == len(video.interactions) - len(held_out)
    assert all(e.split == "train" for e in ctx.train)


def test_few_shot_fits_only_the_sampled_examples(video, spy):
    run_baselines(video, "preference", ["spy"], train_samples=16, seed=7, history_len=10)
    ctx = spy.seen[0]
    expected = subsample(preference_examples(video)["train"], 16, 7)
    assert ctx.train == expected
    visible = {key(x) for e in expected for x in e.history[-10:] + (e.target,)}
    assert {key(x) for x in ctx.interactions} == visible


def test_test_labels_do_not_change_any_fit(video):
    """Flip every test target's rating: validation scores of every baseline stay exactly the same."""
    test_keys = {key(e.target) for e in preference_examples(video)["test"]}
    flipped = [Interaction(x.user_id, x.item_id, x.timestamp, 6 - x.rating) if key(x) in test_keys else x
               for x in video.interactions]
    before = run_baselines(video, "preference", params=FAST)
    after = run_baselines(RecData(video.name, video.items, flipped), "preference", params=FAST)
    for name in before:
        assert before[name]["valid"] == after[name]["valid"], name
        assert before[name]["test"]["auc"] != after[name]["test"]["auc"] or name == "random", name


def test_few_shot_runs_and_reports_single_class_samples(video):
    r = run_baselines(video, "preference", ["popularity", "logreg"], train_samples=64)
    assert 0 <= r["logreg"]["test"]["auc"] <= 1
    tiny = run_baselines(video, "preference", ["logreg"], train_samples=1)
    assert "constant prediction" in tiny["logreg"]["note"]


def test_cold_start_slice_counts_train_period_interactions():
    # i_new: 2 train-period interactions (u0, u1), then u2's test target; k0, k1: test targets never trained on.
    inter = []
    for u in range(3):
        seq = [f"i{k}" for k in range(u, u + 3)] + ["i_pop", f"j{u}", "i_new" if u == 2 else f"k{u}"]
        inter += [Interaction(f"u{u}", it, t, click=1) for t, it in enumerate(seq)]
    inter += [Interaction(u, "i_new", -1, click=1) for u in ("u0", "u1")]  # their train periods
    items = {x.item_id: Item(x.item_id, x.item_id) for x in inter}
    items.update({f"n{k}": Item(f"n{k}", f"n{k}") for k in range(30)})
    data = RecData("toy", items, sorted(inter, key=lambda x: (x.user_id, x.timestamp)))
    test = ranking_examples(data, negatives=5)["test"]
    period = train_interactions(data, "ranking")
    assert len(period) == len(inter) - 6
    assert [e.candidates[0] for e in test] == ["k0", "k1", "i_new"]
    assert [e.candidates[0] for e in cold_slice(test, period, max_train=1)] == ["k0", "k1"]
    assert len(cold_slice(test, period, max_train=2)) == 3


def test_cold_slice_is_the_llm_evaluations_slice(video):
    test = ranking_examples(video, negatives=19, seed=42)["test"]
    for max_train in (2, 30):
        flags = cold_start(test, train_item_counts(video), max_train)
        ours = cold_slice(test, train_interactions(video, "ranking"), max_train)
        assert ours == [e for e, cold in zip(test, flags) if cold]
    assert ours  # the check compared a non-empty slice


def test_unknown_names_and_tasks_are_user_errors(video):
    from recpeft.errors import UserError

    with pytest.raises(UserError, match="unknown baseline"):
        run_baselines(video, "preference", ["nope"])
    with pytest.raises(UserError, match="does not do ranking"):
        run_baselines(video, "ranking", ["logreg"])
    with pytest.raises(UserError, match="few-shot"):
        run_baselines(video, "ranking", ["popularity"], train_samples=16)


def test_cli_json_and_out_file(tmp_path):
    from typer.testing import CliRunner

    from recpeft.cli.app import app

    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["baselines", "--task", "ranking", "--domain", "ecommerce", "--models",
                                   "random,popularity,item_knn", "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["task"] == "ranking" and printed["settings"]["negatives"] == 19
    assert printed["data"]["name"] == "sample:ecommerce" and len(printed["data"]["fingerprint"]) == 16
    assert set(printed["results"]) == {"random", "popularity", "item_knn"}
    assert {"hr@10", "ndcg@10", "mrr", "n"} <= set(printed["results"]["item_knn"]["test"])
    table = CliRunner().invoke(app, ["baselines", "--task", "preference", "--domain", "news", "--models", "logreg"])
    assert table.exit_code == 0 and "logreg" in table.stdout and "auc" in table.stdout
    choice = CliRunner().invoke(app, ["baselines", "--task", "choice", "--domain", "ecommerce", "--models",
                                      "popularity", "--negatives", "9", "--json"])
    assert choice.exit_code == 0, choice.output  # was a KeyError: the report had no columns for choice
    assert json.loads(choice.stdout)["task"] == "ranking" and json.loads(choice.stdout)["settings"]["negatives"] == 9


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "recpeft", "baselines", "--task", "ranking", "--models", "logreg",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not do ranking" in proc.stderr
    assert not out.exists()


def test_limits_score_the_llm_evaluations_subsets(video, spy):
    """test_limit / cold_limit: the seeded subsets `Task.eval_set(split, N)` / `cold_eval_set` score."""
    res = run_baselines(video, "ranking", ["spy"], seed=42, test_limit=8, cold_limit=3, cold_max_train=30)
    valid, test, cold = spy.scored
    splits = ranking_examples(video, negatives=19, seed=42)
    assert test == subsample(splits["test"], 8, 42) and res["spy"]["test"]["n"] == 8
    flags = cold_start(splits["test"], train_item_counts(video), 30)
    assert len(cold) == 3 and cold == subsample([e for e, c in zip(splits["test"], flags) if c], 3, 42)
    assert len(valid) == len(splits["valid"])  # validation is not cut
