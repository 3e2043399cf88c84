"""Interactive sessions (issue 17.3): the Session state machine, its prompts, the HTTP sessions with their
bounds and expiry, and `recpeft chat` driven in a real terminal (tmux) as a person would."""

import shlex
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from fastapi.testclient import TestClient

import recpeft
from recpeft.data.formats.csvdir import load_sample
from recpeft.errors import UserError
from recpeft.serving.http import Limits, create_app
from recpeft.serving.http_sessions import SessionStore
from recpeft.serving.session import MAX_CRITIQUES
from recpeft.tasks.prompts import profile_message, user_message

VIDEO = list(load_sample("video").items.values())


@pytest.fixture(scope="module")
def rec(tiny_adapters):
    return recpeft.load(tiny_adapters["news"])


def test_a_session_never_repeats_and_feedback_reaches_the_prompt(rec):
    s = rec.session(VIDEO[:30], history=[VIDEO[40]], k=4)
    first = s.recommend()
    assert len(first) == 4 and s.turns == 1
    # turn one is the plain ranking of the candidates: the same scores as rank()
    assert [(i.item_id, round(p, 5)) for i, p in first] == \
        [(i.item_id, round(p, 5)) for i, p in rec.rank([VIDEO[40]], VIDEO[:30], k=4)]
    rejected, accepted = s.reject(1), s.accept(first[1][0].title)
    s.critique("  something   shorter ")
    req = s.request()
    assert req.critiques == ("something shorter",)
    assert [(i.item_id, m) for i, m in req.history] == [(VIDEO[40].item_id, True), (rejected.item_id, False),
                                                        (accepted.item_id, True)]
    second = s.recommend()
    assert not {i.item_id for i, _ in first} & {i.item_id for i, _ in second}
    # the turn's scores are the recommender's for the same history + critique prompt
    prepared = rec.prepare(req.history, req.items, None, req.critiques)
    again = rec.score_prepared([prepared])[0]
    assert [round(p, 5) for _, p in second] == sorted((round(p, 5) for p in again), reverse=True)[:4]
    assert again != rec.score(req.history, req.items)  # the critique changes the scores
    while s.recommend():
        pass
    assert len(s.shown) == 30 and s.remaining() == []  # every candidate, each once
    assert len({i.item_id for i in s.shown}) == len(s.shown)


def test_session_errors_are_clear(rec):
    s = rec.session(VIDEO[:5], k=2)
    s.recommend()
    for call, needle in [(lambda: s.accept(3), "no recommendation number 3"),
                         (lambda: s.reject("No Such Film"), "not among this session's candidates"),
                         (lambda: s.critique("   "), "the critique is empty"),
                         (lambda: s.critique("x" * 301), "at most 300 characters"),
                         (lambda: rec.session([], k=2), "candidate list is empty"),
                         (lambda: rec.session(VIDEO[:3], k=0), "k must be at least 1"),
                         (lambda: rec.session(VIDEO[:3], profile=" "), "the profile is empty")]:
        with pytest.raises(UserError) as err:
            call()
        assert needle in str(err.value)
    for n in range(MAX_CRITIQUES + 2):
        s.critique(f"c{n}")
    assert s.critiques == [f"c{n}" for n in range(2, MAX_CRITIQUES + 2)]


def test_the_session_prompt_is_the_plain_prompt_until_there_is_feedback():
    from recpeft.domains import get_domain
    from recpeft.tasks.prompts import PreferencePrompt

    d, liked, target = get_domain("video"), VIDEO[:2], VIDEO[5]
    assert profile_message(None, liked, [], target, d) == user_message(PreferencePrompt(liked, [], target), d)
    with_critique = profile_message(None, liked, [], target, d, ("less violent", "shorter"))
    assert with_critique.splitlines()[2] == "The user asks for: less violent; shorter."
    assert with_critique.splitlines()[:2] == user_message(PreferencePrompt(liked, [], target), d).splitlines()[:2]


def test_http_sessions_follow_the_python_session_and_are_bounded(tiny_adapters):
    recs = recpeft.load_many({"news": tiny_adapters["news"]})
    app = create_app(recs, Limits(max_sessions=2, session_ttl=60))
    client = TestClient(app)
    titles = [i.title for i in VIDEO[:20]]
    r = client.post("/v1/sessions", json={"domain": "news", "candidates": titles, "history": [titles[19]], "k": 3})
    assert r.status_code == 200, r.text
    sid, first = r.json()["session_id"], r.json()["items"]
    local = recs["news"].session(titles, history=[titles[19]], k=3)
    assert [x["title"] for x in first] == [i.title for i, _ in local.recommend()]
    r = client.post(f"/v1/sessions/{sid}", json={"reject": [1], "accept": [first[2]["title"]], "critique": "shorter"})
    assert r.status_code == 200, r.text
    local.reject(1), local.accept(first[2]["title"]), local.critique("shorter")
    want = local.recommend()
    assert [x["title"] for x in r.json()["items"]] == [i.title for i, _ in want]
    assert all(abs(x["score"] - p) < 1e-6 for x, (_, p) in zip(r.json()["items"], want))
    state = client.get(f"/v1/sessions/{sid}").json()
    assert state["critiques"] == ["shorter"] and state["turns"] == 2 and first[0]["title"] in state["disliked"]
    for body, needle in [({"accept": [9]}, "no recommendation number 9"), ({"critique": ""}, "at least 1 character"),
                         ({"colour": 1}, "Extra inputs are not permitted"),
                         ({"accept": [1], "reject": ["No Such Film"], "critique": "x"}, "not among")]:
        r = client.post(f"/v1/sessions/{sid}", json=body)
        assert r.status_code == 422 and needle in r.text, r.text
    assert client.get(f"/v1/sessions/{sid}").json() == state  # a refused request applied nothing
    r = client.post("/v1/sessions", json={"domain": "news", "candidates": titles, "profile": {"colour": "red"}})
    assert r.status_code == 422 and "profile.colour" in r.text
    # bounded: a third session ends the least recently used one
    others = [client.post("/v1/sessions", json={"domain": "news", "candidates": titles}).json()["session_id"]
              for _ in range(2)]
    r = client.get(f"/v1/sessions/{sid}")
    assert r.status_code == 404 and "unknown or expired" in r.text
    assert client.delete(f"/v1/sessions/{others[0]}").json() == {"session_id": others[0], "ended": True}
    assert client.get(f"/v1/sessions/{others[0]}").status_code == 404
    assert client.post("/v1/sessions", json={"domain": "sports", "candidates": titles}).status_code == 404


def test_a_busy_session_is_409_and_an_empty_page_clears_the_current_one(tiny_adapters):
    import asyncio

    recs = recpeft.load_many({"news": tiny_adapters["news"]})
    app = create_app(recs, Limits())
    client = TestClient(app)
    titles = [i.title for i in VIDEO[:4]]
    r = client.post("/v1/sessions", json={"domain": "news", "candidates": titles, "k": 3})
    sid = r.json()["session_id"]
    entry = app.state.sessions.get(sid)
    asyncio.run(entry.lock.acquire())  # another request on this session is running
    r = client.post(f"/v1/sessions/{sid}", json={})
    assert r.status_code == 409 and "busy" in r.text
    entry.lock.release()
    assert len(client.post(f"/v1/sessions/{sid}", json={}).json()["items"]) == 1  # the last candidate
    r = client.post(f"/v1/sessions/{sid}", json={})
    assert r.json()["items"] == [] and r.json()["remaining"] == 0
    assert client.get(f"/v1/sessions/{sid}").json()["current"] == []  # no stale page to accept from
    assert client.post(f"/v1/sessions/{sid}", json={"accept": [1]}).status_code == 422
    with pytest.raises(UserError, match="max_sessions must be >= 1"):
        create_app(recs, Limits(max_sessions=0))


def test_repeated_critiques_are_not_repeated_in_the_prompt(rec):
    s = rec.session(VIDEO[:5], k=2)
    for text in ("more Drama", "shorter", "more  Drama"):
        s.critique(text)
    assert s.critiques == ["shorter", "more Drama"]


def test_sessions_expire_when_idle():
    now = [0.0]
    store = SessionStore(max_sessions=10, ttl=5, clock=lambda: now[0])
    a, b = store.add("A", "news"), store.add("B", "news")
    now[0] = 4.0
    store.get(a)  # used: lives until 9
    now[0] = 6.0
    assert store.get(a).session == "A"
    with pytest.raises(KeyError):
        store.get(b)
    assert len(store) == 1


def _tmux(*args) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _wait_screen(session: str, needle: str, seconds: float = 120) -> str:
    """The screen once `needle` is on it and the program waits for input again after it (its prompt,
    "> " with the space dropped by tmux, ends the output that follows)."""
    deadline = time.monotonic() + seconds
    while True:
        screen = _tmux("capture-pane", "-p", "-t", session, "-S", "-200")
        if needle in screen and ("\n>\n" in screen.split(needle)[-1] or needle == "EXIT="):
            return screen
        assert time.monotonic() < deadline, f"{needle!r} never appeared; screen:\n{screen}"
        time.sleep(0.2)


def test_chat_in_a_real_terminal(tiny_adapters, tmp_path):
    """Type into `recpeft chat` in tmux: it recommends, takes a rejection, a critique and an acceptance,
    says what went wrong on a bad number without quitting, and ends on q."""
    cands = tmp_path / "cands.txt"
    cands.write_text("\n".join(i.title for i in VIDEO[:12]) + "\n")
    name = f"recpeft-chat-{tmp_path.name}"
    cmd = shlex.join([sys.executable, "-m", "recpeft", "chat", "--adapter", str(tiny_adapters["news"]),
                      "--candidates", str(cands), "-k", "3"])
    _tmux("new-session", "-d", "-s", name, "-x", "200", "-y", "50", f"cd {shlex.quote(str(ROOT))} && {cmd}; "
          "echo EXIT=$?; sleep 30")
    try:
        screen = _wait_screen(name, "recpeft chat:")
        first = [line for line in screen.splitlines() if line.startswith(" 1. ")][0]
        _tmux("send-keys", "-t", name, "--", "-1", "Enter")
        _wait_screen(name, "rejected: " + first.split("  ", 2)[1].split("  (")[0])
        _tmux("send-keys", "-t", name, "--", "+7", "Enter")
        _wait_screen(name, "no recommendation number 7")
        _tmux("send-keys", "-t", name, "--", "something with dragons", "Enter")
        screen = _wait_screen(name, "noted: something with dragons")
        third = [line for line in screen.split("noted: something with dragons")[1].splitlines()
                 if line.startswith(" 1. ")][0]
        _tmux("send-keys", "-t", name, "--", "+1", "Enter")
        _wait_screen(name, "accepted: " + third.split("  ", 2)[1].split("  (")[0])
        _tmux("send-keys", "-t", name, "--", "q", "Enter")
        screen = _wait_screen(name, "EXIT=")
        assert "EXIT=0" in screen and "bye: 4 turns" in screen and "Traceback" not in screen
        shown = [line.split("  ", 2)[1].split("  (")[0] for line in screen.splitlines()
                 if line[:4].strip()[:-1].isdigit()]
        assert len(shown) == 12 and len(set(shown)) == 12  # four turns of three, nothing shown twice
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


# ------------------------------------------------------------------ the simulated user (experiments/session_sim.py)

def _ranking_case(n_items: int = 12):
    from recpeft.data.schema import Interaction, Item, RecData
    from recpeft.tasks.examples import RankingExample

    genres = ["Noir"] + ["Comedy"] * (n_items - 1)  # the target (item 0) is the only Noir film
    items = {str(i): Item(str(i), f"Film {i}", categories=(genres[i],)) for i in range(n_items)}
    items["h"] = Item("h", "Old film", categories=("Drama",))
    data = RecData("case", items, [Interaction("u", "h", 1, rating=5.0)])
    ex = RankingExample("u", "test", 2, (Interaction("u", "h", 1, rating=5.0),), tuple(str(i) for i in range(n_items)))
    return data, ex


def test_the_filtering_session_and_paging():
    from recpeft.evaluation.sessions import critiques_for, hit_rates, paged, simulate_filter

    data, ex = _ranking_case()
    assert critiques_for(data, ex, 3) == ["Noir", "Noir"]
    against = [0.0] + [1.0] * 11  # the classical scorer ranks the target last
    (sim,) = simulate_filter(data, [ex], [against], k=3, turns=3)
    assert sim.hit_turn == 2 and sim.critiques == ["more Noir", "more Noir"]  # found once the user asks for Noir
    assert simulate_filter(data, [ex], [[1.0] + [0.0] * 11], k=3, turns=3)[0].hit_turn == 1
    assert paged(against, 0, 3, 3) == 0 and paged(against, 0, 3, 4) == 4 and paged([0.5, 0.9, 0.1], 0, 1, 3) == 2
    assert hit_rates([sim], 3) == [0.0, 1.0, 1.0]


def test_llm_sessions_in_lockstep_equal_one_session_at_a_time(rec):
    from recpeft.data.schema import Interaction
    from recpeft.evaluation.sessions import critiques_for, simulate_llm
    from recpeft.tasks.examples import ranking_examples

    data = load_sample("video")
    users = ranking_examples(data, negatives=14, seed=0)["test"][:5]
    sims, first = simulate_llm(rec, data, users, k=3, turns=3, users_per_call=2)
    for ex, sim, scores in zip(users, sims, first):
        history = [(data.items[x.item_id], x.liked) for x in ex.history]
        assert scores == pytest.approx(rec.score(history, [data.items[c] for c in ex.candidates]), abs=1e-5)
        s = rec.session([data.items[c] for c in ex.candidates], history, k=3)
        hit = 0
        for t, cat in enumerate(critiques_for(data, ex, 3) + [None]):
            if any(i.item_id == ex.candidates[0] for i, _ in s.recommend()):
                hit = t + 1
                break
            if cat is not None:
                s.critique(f"more {cat}")
        assert sim.hit_turn == hit
        assert isinstance(ex.history[0], Interaction)


def test_critique_share_puts_the_true_items_category_in_training_prompts(tiny_task_model):
    from recpeft.config import TrainConfig, build_config
    from recpeft.domains import get_domain
    from recpeft.models.load import load_base
    from recpeft.tasks import get_task
    from recpeft.tasks.batches import fit
    from recpeft.tasks.examples import liked_disliked
    from recpeft.tasks.ranking import TRAIN_NEGATIVES, candidate_examples

    _, tok, _ = load_base(str(tiny_task_model))
    data, domain, cfg = load_sample("video"), get_domain("video"), TrainConfig(task="ranking")
    for share, expected in ((1.0, True), (0.0, False)):
        task = get_task("ranking", data, get_domain("video"), tok, TrainConfig(task="ranking", critique_share=share))
        examples = task.train_examples(6)
        rows = task.encode_train(examples)
        assert len(rows) == 6 * (1 + TRAIN_NEGATIVES)
        for n, ex in enumerate(examples):
            target = data.items[ex.candidates[0]]
            for row, c in zip(rows[2 * n:2 * n + 2], candidate_examples(ex, 2)):
                def ids(critiques, c=c):
                    return fit(tok, lambda h: profile_message(None, *liked_disliked(data, c.history, h),
                                                             data.items[c.target.item_id], domain, critiques),
                               cfg.history_len, cfg.max_length)
                # the pair's rows carry the same critique: one of the true item's categories, or none
                asked = [cat for cat in target.categories if row.input_ids == ids((f"more {cat}",))]
                assert bool(asked) == expected and (expected or row.input_ids == ids(()))
    with pytest.raises(UserError, match="critique_share trains the ranking task"):
        build_config(task="preference", critique_share=0.5)
