"""User-level DP (--dp-max-examples-per-user): the per-user cap, group privacy through opacus' accountant,
δ against the number of users, composition of guarantees, and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dp_runs import adapter, settings

from recpeft.config import build_config
from recpeft.errors import UserError
from recpeft.training import privacy, privacy_guarantee
from recpeft.training.trainer import train

# ------------------------------------------------------------------------------ user-level DP

K = 3  # at most 3 training examples per user: 12 users of small_news, 36 training examples
USER_FLAGS = {"dp_epsilon": 8.0, "dp_max_examples_per_user": K, "train_samples": 0}


def user_level_config(tiny_model, data, work: Path, **extra):
    return build_config(**settings(tiny_model, data, work, **{**USER_FLAGS, **extra}))


def test_the_cap_keeps_at_most_k_examples_per_user_chosen_per_user_and_seeded(small_news, tmp_path):
    """The examples are the task's own (Task.train_examples); the choice of one user's examples depends on the
    seed and that user's examples only: the same on every call, and the same with another user removed."""
    from collections import Counter

    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.tasks.examples import preference_examples

    data = load_data("news", str(small_news))
    everyone = preference_examples(data)["train"]
    per_user_all = Counter(ex.user_id for ex in everyone)
    chosen = privacy.training_set(build_config(data=str(small_news), dp_epsilon=1.0, dp_max_examples_per_user=K),
                                  data, get_domain("news"))
    per_user = Counter(ex.user_id for ex in chosen)
    assert max(per_user.values()) == K and len(per_user) == len(per_user_all) == 12
    assert all(per_user[u] == min(K, n) for u, n in per_user_all.items())
    assert set(chosen) <= set(everyone) and chosen == [ex for ex in everyone if ex in set(chosen)]  # in order
    assert privacy.cap_per_user(everyone, K, 42) == chosen  # the task's selection is cap_per_user's, seeded
    assert privacy.cap_per_user(list(everyone), K, 42) == chosen
    assert privacy.cap_per_user(everyone, K, 7) != chosen  # another seed, another choice
    gone = sorted(per_user_all)[0]
    without = privacy.cap_per_user([ex for ex in everyone if ex.user_id != gone], K, 42)
    assert without == [ex for ex in chosen if ex.user_id != gone]  # the others' examples are untouched
    assert privacy.cap_per_user(everyone, 10**6, 42) == everyone


def test_a_user_level_run_records_the_group_privacy_of_opacus_accountant(tiny_model, small_news, tmp_path):
    """User-level target (8, δ) with K = 3: the accountant runs for ε₀ = 8/3 at δ₀ = δ / (3 e^(2 ε₀)); the record
    says (3 ε₀ spent, δ) per user and (ε₀ spent, δ₀) per example, and no user has more than 3 training rows."""
    import math
    from collections import Counter

    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    from recpeft.tasks.base import Task

    seen_rows = []
    real = Task.train_examples
    Task.train_examples = lambda self, samples=0: seen_rows.append(real(self, samples)) or seen_rows[-1]
    try:
        result = train(user_level_config(tiny_model, small_news, tmp_path, max_steps=6, checkpoint_every=0),
                       show_progress=False)
    finally:
        Task.train_examples = real
    assert seen_rows and all(max(Counter(ex.user_id for ex in rows).values()) <= K for rows in seen_rows)
    assert len(seen_rows[-1]) == result.metrics["train_examples"] == 36  # what the model trained on
    rec = json.loads((tmp_path / "out" / "recpeft.json").read_text())["privacy"]
    assert rec == result.metrics["privacy"]
    users, n, q, steps = 12, 36, 1 / 9, 6  # batch 4 of 36 examples: q = 1/9
    delta = min(1e-5, 1 / (10 * users))  # the default δ counts users, not examples
    eps0_target, delta0 = 8.0 / K, delta / (K * math.exp((K - 1) * 8.0 / K))
    assert (rec["unit"], rec["user_level"], rec["max_examples_per_user"], rec["users"]) == ("user", True, K, users)
    assert (rec["training_examples"], rec["sample_rate"], rec["steps"], rec["delta"]) == (n, q, steps, delta)
    assert rec["example_epsilon_target"] == pytest.approx(eps0_target)
    assert rec["example_delta"] == pytest.approx(delta0, rel=1e-12)
    assert rec["noise_multiplier"] == get_noise_multiplier(target_epsilon=eps0_target, target_delta=delta0,
                                                           sample_rate=q, steps=steps, accountant="rdp")
    accountant = RDPAccountant()
    accountant.history = [(rec["noise_multiplier"], q, steps)]
    eps0 = accountant.get_epsilon(delta0)
    assert rec["example_epsilon_spent"] == pytest.approx(eps0, abs=1e-6)
    assert eps0_target - 0.05 < eps0 <= eps0_target
    assert rec["epsilon_spent"] == pytest.approx(K * eps0, abs=1e-5) and rec["epsilon_target"] == 8.0
    assert K * math.exp((K - 1) * eps0) * delta0 <= delta * (1 + 1e-12)  # group privacy's δ stays within δ
    card = (tmp_path / "out" / "README.md").read_text()
    assert "level of one **user**" in card and f"at most {K} training examples" in card
    assert f"{rec['epsilon_spent']:.3g}" in card and f"{rec['example_epsilon_spent']:.3g}" in card
    assert "| user |" in card and "Not user-level" not in card


def test_delta_is_checked_against_the_number_of_users(small_news):
    """At user level N counts users (12), not examples (36): δ = 0.05 >= 1/36 is fine, δ = 1/12 is not."""
    from recpeft.data import load_data
    from recpeft.domains import get_domain

    data, domain = load_data("news", str(small_news)), get_domain("news")
    run = privacy.for_run(build_config(data=str(small_news), dp_delta=0.05, **USER_FLAGS), data, domain)
    assert (run.n, run.users, run.delta, run.unit) == (36, 12, 0.05, "user")
    with pytest.raises(UserError, match=r"'dp_delta' 0.0833333 must be below 1/N = 0.0833333 \(N = 12 users\)"):
        privacy.for_run(build_config(data=str(small_news), dp_delta=1 / 12, **USER_FLAGS), data, domain)
    with pytest.raises(UserError, match=r"\(N = 285 training examples\)"):  # example level: all 285 examples
        privacy.for_run(build_config(data=str(small_news), dp_epsilon=8.0, dp_delta=0.05), data, domain)


def test_instruction_data_has_no_users_to_cap(tmp_path):
    from recpeft.data import load_data
    from recpeft.domains import get_domain

    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps({"instruction": "Is it good?", "input": f"item {k}", "output": "Yes."}) + "\n"
                            for k in range(20)))
    data = load_data("news", str(path))
    with pytest.raises(UserError, match=r"^--dp-max-examples-per-user needs data with users; data .* is instruction "
                                        r"data \(alpaca\), whose records belong to no user$"):
        privacy.for_run(build_config(data=str(path), **USER_FLAGS), data, get_domain("news"))


def test_the_cli_refuses_a_cap_without_dp_epsilon_in_one_line(tmp_path):
    (tmp_path / "run.yaml").write_text("dp_max_examples_per_user: 4\n")
    out = subprocess.run([sys.executable, "-m", "recpeft", "train", "--config", "run.yaml", "-o", str(tmp_path / "o")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "recpeft: error: run.yaml:1: 'dp_max_examples_per_user' needs 'dp_epsilon' (--dp-epsilon): "
        "differential privacy is off without it"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_a_user_level_run_resumes_to_the_same_examples_adapter_and_epsilon(tiny_model, small_news, tmp_path):
    """36 examples in batches of 4: 9 steps an epoch. Resumed from step 8 of a finished 11-step run, the run
    crosses the epoch boundary again and ends with the same adapter, losses and privacy record."""
    ref_cfg = user_level_config(tiny_model, small_news, tmp_path, max_steps=11, checkpoint_every=4)
    reference = train(ref_cfg, show_progress=False)
    (run,) = (tmp_path / "runs" / "news").iterdir()
    state = json.loads((run / "checkpoint-8" / "state.json").read_text())["privacy"]
    assert (state["unit"], state["max_examples_per_user"], state["training_examples"]) == ("user", K, 36)
    assert state["history"] == [[reference.metrics["privacy"]["noise_multiplier"], 1 / 9, 8]]
    resumed = train(user_level_config(tiny_model, small_news, tmp_path, max_steps=11, checkpoint_every=4,
                                      output_dir=str(tmp_path / "resumed"), resume=str(run / "checkpoint-8")),
                    show_progress=False)
    assert resumed.metrics["privacy"] == reference.metrics["privacy"]
    assert resumed.losses == reference.losses
    ref, got = adapter(tmp_path / "out"), adapter(tmp_path / "resumed")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=0, msg=name)


def user_record(eps0: float, delta0: float, k: int) -> dict:
    eps, delta = privacy_guarantee.group_privacy(eps0, delta0, k)
    return {"unit": "user", "user_level": True, "max_examples_per_user": k, "epsilon_spent": eps, "delta": delta,
            "example_epsilon_spent": eps0, "example_delta": delta0}


def test_user_level_guarantees_compose_per_user_and_a_mix_per_example():
    """Basic composition in the sources' unit; user- and example-level sources together compose at the weaker
    unit, per example, with the user-level sources' own example-level (ε₀, δ₀)."""
    import math

    assert privacy_guarantee.example_target(6.0, 1e-5, 1) == (6.0, 1e-5)
    eps0, delta0 = privacy_guarantee.example_target(6.0, 1e-5, 3)
    assert privacy_guarantee.group_privacy(eps0, delta0, 3) == pytest.approx((6.0, 1e-5), rel=1e-12)
    assert delta0 == pytest.approx(1e-5 / (3 * math.exp(4.0)))
    a, b = user_record(2.0, 1e-7, 3), user_record(1.0, 2e-7, 5)
    example = {"unit": "example", "user_level": False, "epsilon_spent": 1.5, "delta": 1e-5}  # an older record
    both = privacy_guarantee.compose(["a", "b"], [{"privacy": a}, {"privacy": b}])
    assert (both["unit"], both["user_level"]) == ("user", True)
    assert both["epsilon"] == pytest.approx(a["epsilon_spent"] + b["epsilon_spent"])
    assert both["delta"] == pytest.approx(a["delta"] + b["delta"])
    assert [s["max_examples_per_user"] for s in both["sources"]] == [3, 5]
    card = privacy_guarantee.composed_card(both)
    assert "per **user**" in card and "3 / 5 training examples per user" in card
    assert privacy_guarantee.guarantee_words(both) == "per user"
    mixed = privacy_guarantee.compose(["a", "e"], [{"privacy": a}, {"privacy": example}])
    assert (mixed["unit"], mixed["user_level"]) == ("example", False)
    assert mixed["epsilon"] == pytest.approx(2.0 + 1.5) and mixed["delta"] == pytest.approx(1e-7 + 1e-5)
    assert "mix user- and example-level" in mixed["composition"]
    assert "some sources are user-level and others example-level" in privacy_guarantee.composed_card(mixed)
    with pytest.raises(UserError, match="which has no privacy guarantee"):
        privacy_guarantee.compose(["a", "plain"], [{"privacy": a}, {"privacy": None}])


def test_summary_lines_name_the_unit():
    assert privacy_guarantee.guarantee_words({"unit": "example"}) == "per training example"
    assert privacy_guarantee.guarantee_words(user_record(1.0, 1e-7, 4)) == "per user (at most 4 training examples each)"
