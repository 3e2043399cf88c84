"""experiments/dp_grad_norms.py: the signal DP-SGD keeps of the gradient, checked by hand and end to end."""

import json
import math
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import dp_grad_norms  # noqa: E402


def test_signal_and_noise_match_a_hand_computed_case():
    # two examples that disagree (orthogonal), one number that never gets a gradient
    grads = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    out = dp_grad_norms.signal_and_noise(grads, [1.0, 10.0], sigma=2.0, batch=4.0)
    assert out["params"] == 3 and out["live_params"] == 2
    assert out["unclipped_mean_norm"] == pytest.approx(2.5)  # |(1.5, 2, 0)|
    assert out["mean_direction_norm"] == pytest.approx(math.sqrt(0.5))
    tight, loose = out["per_clip"]
    # C 1 clips both to unit length: mean (0.5, 0.5, 0); noise 2 * 1 * sqrt(3) / 4 on it
    assert tight["clipped_fraction"] == 1.0 and tight["signal_norm"] == pytest.approx(math.sqrt(0.5))
    assert tight["noise_norm"] == pytest.approx(math.sqrt(3) / 2)
    assert tight["signal_over_noise"] == pytest.approx(math.sqrt(0.5) / (math.sqrt(3) / 2))
    assert tight["live_signal_over_noise"] == pytest.approx(math.sqrt(0.5) / (math.sqrt(2) / 2))
    # C 10 clips neither: the plain mean, under 10x the noise
    assert loose["clipped_fraction"] == 0.0 and loose["signal_norm"] == pytest.approx(2.5)
    assert loose["signal_over_noise"] == pytest.approx(2.5 / (10 * math.sqrt(3) / 2))
    # orthogonal examples share no direction: the population signal is 0 however large the sample mean
    assert tight["population_signal_sq"] == pytest.approx(0.0) and loose["population_signal_sq"] == pytest.approx(0.0)


def test_answer_directions_split_the_step_into_the_prior_and_the_ranking():
    # a like and a dislike, both at P(Yes) 0.8: the model says Yes too often; their margins' gradients differ
    dz = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels, p = torch.tensor([1, 0]), torch.tensor([0.8, 0.8])
    grads = (p - labels.float())[:, None] * dz  # the 2-way cross-entropy's gradient, (p - y)·∇z
    losses = -torch.log(torch.tensor([0.8, 0.2]))
    out = dp_grad_norms.answer_directions(grads, labels, losses, [10.0], sigma=2.0, batch=4.0)
    assert out["label1_rate"] == 0.5 and out["mean_p_label1"] == pytest.approx(0.8)
    # prior u = (0.5, 0.5, 0) and ranking r = (1, -1, 0) are orthogonal here
    assert out["prior_cos_ranking"] == pytest.approx(0.0, abs=1e-6)
    (row,) = out["per_clip"]  # C 10 clips nothing: the step is -(mean gradient) = (0.1, -0.4, 0)
    assert row["step_cos_prior"] == pytest.approx(-0.15 / (math.sqrt(0.17) * math.sqrt(0.5)))  # lowers P(Yes)
    assert row["step_cos_ranking"] == pytest.approx(0.5 / (math.sqrt(0.17) * math.sqrt(2)))  # and ranks
    assert row["ranking_signal_over_noise"] == pytest.approx(0.5 / math.sqrt(2) / (2.0 * 10.0 / 4.0))


def test_population_signal_removes_the_sample_means_bias():
    same = torch.tensor([[1.0, 0.0]] * 3)  # three equal gradients: |E g|² = 1, no spread
    assert dp_grad_norms.population_signal(same) == pytest.approx((1.0, 0.0))
    # pairs' dot products: (1.2, 0.8, 0.96) -> mean 0.9866..., |x̄|² alone would say 1.0977...
    x = torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.8, 0.0]])
    est, se = dp_grad_norms.population_signal(x)
    assert est == pytest.approx((1.2 + 0.8 + 0.96) / 3) and float(x.mean(0).norm() ** 2) > est
    assert se > 0
    many = torch.nn.functional.normalize(torch.randn(400, 2000, generator=torch.Generator().manual_seed(0)), dim=1)
    est, se = dp_grad_norms.population_signal(many)  # random unit directions: E u = 0, |ū|² ≈ 1/400
    assert abs(est) < 3 * se and float(many.mean(0).norm() ** 2) == pytest.approx(1 / 400, rel=0.2)


def test_measures_the_runs_as_they_train_and_refuses_a_non_private_one(tiny_task_model, tmp_path):
    args = ["ml100k_dp_large", "--tiny", "--set", f"model={tiny_task_model}", "--set", "threads=1",
            "--runs", "eps8-seed42", "eps1-seed42", "--examples", "8", "--clip", "0.01", "1", "--out", str(tmp_path)]
    results = dp_grad_norms.main(args)
    saved = json.loads((tmp_path / "tiny" / "dp_grad_norms.json").read_text())
    assert saved["runs"].keys() == {"eps8-seed42", "eps1-seed42"} == results["runs"].keys()
    eps8, eps1 = saved["runs"]["eps8-seed42"], saved["runs"]["eps1-seed42"]
    assert eps1["sigma"] > eps8["sigma"] > 0 and eps8["examples"] == 8
    # a Yes/No task: the step split into the prior's and the ranking's directions, for every C
    answer = eps8["answer"]
    assert 0 < answer["label1_rate"] < 1 and 0 < answer["mean_p_label1"] < 1
    assert [r["clip"] for r in answer["per_clip"]] == [0.01, 1.0]
    assert all(-1 <= r["step_cos_prior"] <= 1 and -1 <= r["step_cos_ranking"] <= 1 for r in answer["per_clip"])
    # the same gradients under more noise: the ranking's own signal/noise falls by σ's ratio
    assert (eps1["answer"]["per_clip"][1]["ranking_signal_over_noise"] * eps1["sigma"]
            == pytest.approx(answer["per_clip"][1]["ranking_signal_over_noise"] * eps8["sigma"], rel=1e-4))
    q = eps8["grad_norm_quantiles"]
    assert 0 < q["p10"] <= q["p50"] <= q["p90"]
    # LoRA starts with B = 0: its A matrices get no gradient, so fewer numbers are live than trained
    assert 0 < eps8["live_params"] < eps8["params"]
    assert eps1["per_clip"][0]["signal_over_noise"] < eps8["per_clip"][0]["signal_over_noise"]  # same grads, more noise
    from recpeft.errors import UserError

    with pytest.raises(UserError, match="dp_epsilon"):
        dp_grad_norms.main(args[:6] + ["--runs", "non-private-seed42", "--examples", "4", "--out", str(tmp_path)])
