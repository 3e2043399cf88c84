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
            "--runs", "eps8-seed42", "eps1-seed42", "--examples", "4", "--clip", "0.01", "1", "--out", str(tmp_path)]
    results = dp_grad_norms.main(args)
    saved = json.loads((tmp_path / "tiny" / "dp_grad_norms.json").read_text())
    assert saved["runs"].keys() == {"eps8-seed42", "eps1-seed42"} == results["runs"].keys()
    eps8, eps1 = saved["runs"]["eps8-seed42"], saved["runs"]["eps1-seed42"]
    assert eps1["sigma"] > eps8["sigma"] > 0 and eps8["examples"] == 4
    q = eps8["grad_norm_quantiles"]
    assert 0 < q["p10"] <= q["p50"] <= q["p90"]
    # LoRA starts with B = 0: its A matrices get no gradient, so fewer numbers are live than trained
    assert 0 < eps8["live_params"] < eps8["params"]
    assert eps1["per_clip"][0]["signal_over_noise"] < eps8["per_clip"][0]["signal_over_noise"]  # same grads, more noise
    from recpeft.errors import UserError

    with pytest.raises(UserError, match="dp_epsilon"):
        dp_grad_norms.main(args[:6] + ["--runs", "non-private-seed42", "--examples", "4", "--out", str(tmp_path)])
