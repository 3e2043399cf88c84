"""Cold-start users from a profile (issue 17.1): profile words, the held-out-user split, the profile
task's prompts equal the serving prompts, its baselines, and the Python, CLI and HTTP entry points."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from fastapi.testclient import TestClient

import recpeft
from recpeft.baselines import run_baselines
from recpeft.baselines.profile import GroupPopularity, group_of
from recpeft.config import TrainConfig
from recpeft.data.formats.csvdir import load_sample
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.domains import get_domain
from recpeft.errors import UserError
from recpeft.models.load import load_base
from recpeft.serving.http import create_app
from recpeft.tasks import get_task
from recpeft.tasks.profiles import as_profile, profile_examples, render_profile, user_split

VIDEO = [i.title for i in load_sample("video").items.values()]


def people(users: int = 60, items: int = 40) -> RecData:
    """Users with demographics; user u likes items of genre u % 3 and dislikes the others."""
    genres = ("Action", "Drama", "Comedy")
    catalogue = {str(i): Item(str(i), f"Film {i}", categories=(genres[i % 3],)) for i in range(items)}
    rows = []
    for u in range(users):
        for t in range(12):
            item = (u * 7 + t * 5) % items
            rows.append(Interaction(f"u{u}", str(item), 1000 + t, rating=5.0 if item % 3 == u % 3 else 2.0))
    attrs = {f"u{u}": {"age": str(18 + u % 40), "gender": "MF"[u % 2], "occupation": "writer", "zip": "0"}
             for u in range(users)}
    rows.sort(key=lambda x: (x.user_id, x.timestamp, x.item_id))
    return RecData("people", catalogue, rows, attrs)


def test_profiles_are_worded_once_and_bad_fields_are_clear_errors():
    assert render_profile({"age": 24, "gender": "M", "occupation": "technician", "likes": ["Sci-Fi", "Action"]}) \
        == "I am a 24-year-old man; occupation: technician. I like Sci-Fi and Action."
    assert render_profile({"gender": "female", "likes": "Drama"}) == "I am a woman. I like Drama."
    assert render_profile({"occupation": "none", "likes": ["A", "B", "C"]}) == "I like A, B and C."
    assert render_profile({"occupation": "nurse"}) == "Occupation: nurse."
    assert as_profile("  I love   hard sci-fi ") == "I love hard sci-fi"
    for bad, needle in [({"colour": "red"}, "unknown profile field(s) 'colour'"), ({"age": "old"}, "whole number"),
                        ({"age": 300}, "between 1 and 120"), ({"gender": "x"}, "profile gender must be"),
                        ({}, "the profile is empty"), ({"likes": []}, "the profile is empty"),
                        ("   ", "the profile is empty"), (42, "a profile is a text or a mapping")]:
        with pytest.raises(UserError, match=None) as err:
            as_profile(bad)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_held_out_users_never_train_and_every_seed_sees_the_same_test_lists():
    data = people()
    a, b = profile_examples(data, negatives=5, seed=1), profile_examples(data, negatives=5, seed=2)
    train_users = {e.user_id for e in a["train"]}
    for split in ("valid", "test"):
        assert a[split] and not train_users & {e.user_id for e in a[split]}
        assert all(user_split(e.user_id) == split for e in a[split])
        assert a[split] == b[split]  # candidates seeded by the user alone
    assert [e.candidates[1:] for e in a["train"]] != [e.candidates[1:] for e in b["train"]]
    by_user = {}
    for x in data.interactions:
        by_user.setdefault(x.user_id, []).append(x)
    for e in a["test"]:
        events = by_user[e.user_id]
        assert e.seen == tuple(events[:5])
        assert e.candidates[0] == next(x.item_id for x in events[5:] if x.liked)  # the first like after them
        assert not set(e.candidates[1:]) & {x.item_id for x in events}  # negatives never interacted with
        genre = ("Action", "Drama", "Comedy")[int(e.user_id[1:]) % 3]
        assert f"I like {genre}" in e.profile and ("man" in e.profile or "woman" in e.profile)
    assert all("year-old" not in e.profile for e in profile_examples(data, "genres", negatives=5)["test"])


def test_profile_task_prompts_are_the_serving_prompts(tiny_adapters, tiny_task_model):
    """What the task trains and evaluates on is token for token what Recommender.score(profile=) builds."""
    data = people()
    _, tok, _ = load_base(str(tiny_task_model))
    task = get_task("profile", data, get_domain("video"), tok, TrainConfig(task="profile", negatives=5))
    evalset = task.eval_set("test", 3)
    rec = recpeft.load(tiny_adapters["video"])
    for n, ex in enumerate(evalset.examples):
        prepared = rec.prepare([], [data.items[c] for c in ex.candidates], profile=ex.profile)
        for k, suffix in enumerate(prepared.suffixes):
            assert evalset.rows[n * 6 + k].input_ids == prepared.prefix_ids + suffix
    with pytest.raises(UserError, match="no user attributes"):
        get_task("profile", load_sample("video"), get_domain("video"), tok, TrainConfig(task="profile"))
    ml1m = RecData("movielens-1m:ml-1m", data.items, data.interactions, data.users)
    with pytest.raises(UserError, match="codes ages and occupations"):
        get_task("profile", ml1m, get_domain("video"), tok, TrainConfig(task="profile"))
    # --item-stats: like-rates among the training users only (a held-out user's ratings never show)
    tagged = get_task("profile", data, get_domain("video"), tok, TrainConfig(task="profile", item_stats=True)).data
    for item_id, item in tagged.items.items():
        rated = [x for x in data.interactions if x.item_id == item_id and user_split(x.user_id) == "train"]
        want = f" [{round(100 * sum(x.liked for x in rated) / len(rated))}% liked]" if len(rated) >= 3 else ""
        assert item.title == data.items[item_id].title + want


def test_cached_profile_evaluation_equals_the_full_prompts(tiny_task_model):
    data = people()
    base, tok, _ = load_base(str(tiny_task_model))
    task = get_task("profile", data, get_domain("video"), tok, TrainConfig(task="profile", negatives=5))
    evalset = task.eval_set("test", 5)
    cached = task.evaluate(base, evalset, cached=True).outputs["scores"]
    full = task.evaluate(base, evalset, cached=False).outputs["scores"]
    assert max(abs(a - b) for x, y in zip(cached, full) for a, b in zip(x, y)) < 1e-4


def test_rank_by_profile_alone_and_with_history(tiny_adapters):
    rec = recpeft.load(tiny_adapters["video"])
    fields = {"age": 30, "gender": "F", "likes": ["Drama"]}
    ranked = rec.rank(profile=fields, candidates=VIDEO[:12], k=4)
    assert len(ranked) == 4 and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    text = rec.score([], VIDEO[:12], profile=render_profile(fields))
    assert max(abs(a - b) for a, b in zip(rec.score([], VIDEO[:12], profile=fields), text)) < 1e-6
    assert max(abs(a - b) for a, b in zip(text, rec.score([], VIDEO[:12], naive=True, profile=fields))) < 1e-4
    assert text != rec.score([], VIDEO[:12])  # the profile reaches the prompt
    assert rec.score([VIDEO[20]], VIDEO[:12], profile=fields) != text  # and so does a history beside it
    for bad in ({"colour": "red"}, "", {}):
        with pytest.raises(UserError):
            rec.rank(profile=bad, candidates=VIDEO[:3])


def test_baselines_fit_on_training_users_only():
    data = people()
    res = run_baselines(data, "profile", negatives=5, seed=0)
    assert set(res) == {"random", "popularity", "group_popularity", "genre_popularity", "group_genre_popularity"}
    n = len(profile_examples(data, negatives=5)["test"])
    assert all(r["test"]["n"] == n for r in res.values())
    # users like their own genre: the genre baselines must find it, popularity cannot
    assert res["genre_popularity"]["test"]["ndcg@10"] > res["popularity"]["test"]["ndcg@10"] + 0.1
    assert group_of({"age": "24", "gender": "m"}) == ("M", 1) and group_of({}) == ("", -1)
    model = GroupPopularity()
    from recpeft.baselines.base import FitContext, train_interactions

    model.fit(FitContext(data, "profile", train_interactions(data, "profile"), []))
    held_out = {x.user_id for x in data.interactions if user_split(x.user_id) != "train"}
    assert sum(model.counts.values()) == sum(1 for x in data.interactions if x.user_id not in held_out)
    with pytest.raises(UserError, match="few-shot"):
        run_baselines(data, "profile", train_samples=8)
    # a baseline knows no more of the user than the profile says
    genres_only = run_baselines(data, "profile", ["group_popularity", "popularity"], negatives=5, profile_from="genres")
    assert genres_only["group_popularity"]["test"] == genres_only["popularity"]["test"]
    no_genres = run_baselines(data, "profile", ["genre_popularity", "popularity"], negatives=5,
                              profile_from="demographics")
    assert no_genres["genre_popularity"]["test"] == no_genres["popularity"]["test"]


def test_http_and_cli_take_a_profile(tiny_adapters, tmp_path):
    recs = recpeft.load_many({"video": tiny_adapters["video"]})
    client = TestClient(create_app(recs))
    fields = {"age": 30, "gender": "F", "likes": ["Drama"]}
    want = recs["video"].score([], VIDEO[:6], profile=fields)
    for profile in (fields, render_profile(fields)):
        r = client.post("/v1/score", json={"domain": "video", "profile": profile, "items": VIDEO[:6]})
        assert r.status_code == 200, r.text
        assert max(abs(a - b) for a, b in zip(r.json()["scores"], want)) < 1e-6
    r = client.post("/v1/recommend", json={"domain": "video", "profile": fields, "candidates": VIDEO[:6], "k": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2
    for profile, needle in [({"colour": "red"}, "profile.colour: Extra inputs are not permitted"),
                            ({}, "the profile is empty"), ("", "profile: String should have at least 1 character"),
                            (3, "profile: Input should be a profile text")]:
        r = client.post("/v1/score", json={"domain": "video", "profile": profile, "items": ["x"]})
        assert r.status_code == 422 and needle in r.text, r.text
    cands = tmp_path / "c.txt"
    cands.write_text("\n".join(VIDEO[:6]))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "recpeft", "recommend", "--adapter", str(tiny_adapters["video"]),
                               *args], capture_output=True, text=True, cwd=ROOT)

    r = cli("--profile", render_profile(fields), "--candidates", str(cands), "--json", "-k", "6")
    assert r.returncode == 0, r.stderr
    assert [x["score"] for x in json.loads(r.stdout)] == pytest.approx(sorted(want, reverse=True), abs=1e-5)
    r = cli("--profile", "  ", "--candidates", str(cands))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "the profile is empty" in r.stderr
    r = cli("--candidates", str(cands))
    assert r.returncode == 2 and "give --history" in r.stderr and "Traceback" not in r.stderr
