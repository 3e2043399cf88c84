"""experiments/run.py end to end at smoke-test size: every experiment YAML runs, results JSON + plots land."""

import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import run as runner  # noqa: E402


@pytest.mark.parametrize("name, plots", [
    ("ml100k_preference_shots", {"learning-curve", "roc"}),
    ("scientific_ranking", {"learning-curve"}),
    ("ml100k_interests", {"learning-curve"}),
    ("ml100k_dp", {"privacy-utility", "learning-curve"}),
    ("ml100k_dp_large", {"privacy-utility", "learning-curve"}),
    ("ml100k_coldstart", {"learning-curve"}),
    ("ml100k_session", {"learning-curve"}),
    ("sample_fusion", {"learning-curve"}),
    ("ml100k_fusion", {"learning-curve", "roc"}),
    ("ml100k_llara", {"learning-curve"}),
])
def test_runner_writes_results_and_plots(name, plots, tiny_task_model, tmp_path):
    results = runner.run_experiment(name, tiny=True, sets=[f"model={tiny_task_model}", "threads=1"],
                                    out=tmp_path / "results", adapters=tmp_path / "adapters")
    saved = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert saved["experiment"] == name and saved["tiny"] is True
    assert [r["name"] for r in saved["runs"]] == [r["name"] for r in results["runs"]]
    spec_runs = runner.load_spec(name, True, [])["runs"]
    assert len(saved["runs"]) == len(spec_runs)
    for run in saved["runs"]:
        assert run["test"]["n"] > 0 and run["seconds"] >= 0
        if run["kind"] != "zero-shot":
            assert run["test_base"]["n"] == run["test"]["n"] and len(run["history"]) >= 2
            assert (tmp_path / "adapters" / run["name"] / "recpeft.json").is_file()
    assert {p.split(f"{name}-")[1][:-4] for p in saved["plots"]} == plots
    for p in saved["plots"]:
        assert (tmp_path / "results" / p).stat().st_size > 1000
    spec = runner.load_spec(name, True, [])
    if "baselines" in spec:  # fitted and scored on the very examples the LLM runs scored
        shots = [str(n) for n in spec["baselines"].get("train_samples", [0])]
        assert list(saved["baselines"]) == shots
        for fits in saved["baselines"].values():
            assert set(fits) == set(spec["baselines"]["models"])
            assert all(f["test"]["n"] == saved["runs"][-1]["test"]["n"] for f in fits.values())
    if name == "ml100k_dp_large":  # Poisson batches of 8 in pieces of at most 3: still one step per batch
        private = [r for r in saved["runs"] if r["privacy"]]
        assert all(r["privacy"]["steps"] == 2 and r["privacy"]["max_physical_batch"] == 3 for r in private)
    if name == "ml100k_dp":  # one row per target epsilon, the non-private row (None) last
        table = saved["privacy_utility"]
        assert [r["epsilon"] for r in table] == [1, 8, None]
        assert [r["config"] for r in table] == ["eps1", "eps8", "non-private"]
        assert table[0]["epsilon_spent"][0] <= 1 and table[0]["step_time_vs_non_private"] > 0
    if name == "scientific_ranking":  # the samples have no cold items (test_objectives covers the slice)
        assert saved["runs"][0]["cold_test"] == {"n": 0}
    if name == "ml100k_interests":
        assert "generated_examples" in saved["runs"][0]
        ref = saved["runs"][0]["test_history_reference"]
        assert ref["n"] == saved["runs"][0]["test"]["n"] and 0 <= ref["f1"] <= 1


def test_resume_keeps_finished_runs_and_runs_the_rest(tiny_task_model, tmp_path, capsys):
    sets = [f"model={tiny_task_model}", "threads=1"]
    out, adapters = tmp_path / "results", tmp_path / "adapters"
    first = runner.run_experiment("ml100k_preference_shots", tiny=True, sets=sets, out=out, adapters=adapters)
    path = out / "ml100k_preference_shots.json"
    saved = json.loads(path.read_text())
    assert all(len(r["outputs"]["scores"]) == r["test"]["n"] for r in saved["runs"])
    saved["runs"] = saved["runs"][:1]  # as if stopped after the zero-shot run
    del saved["train"]["dp_max_examples_per_user"]  # as if written before that setting existed (at its default)
    saved["train"]["fusion_lr_scale"] = 1.0  # an old default of a setting no run here uses: it does not count
    path.write_text(json.dumps(saved))
    again = runner.run_experiment("ml100k_preference_shots", tiny=True, sets=sets, out=out, adapters=adapters,
                                  resume=True)
    assert again["runs"][0] == saved["runs"][0]  # kept as it was, seconds included
    assert again["runs"][1]["test"] == first["runs"][1]["test"]  # re-run (seeded: same numbers)
    assert json.loads(path.read_text())["complete"] is True
    # --only a finished run trains nothing (redraws the plots) and keeps the file's state
    saved["runs"] = again["runs"][:1]
    path.write_text(json.dumps({**saved, "complete": False}))
    redrawn = runner.run_experiment("ml100k_preference_shots", tiny=True, sets=sets, out=out, adapters=adapters,
                                    resume=True, only=[saved["runs"][0]["name"]])
    assert [r["name"] for r in redrawn["runs"]] == [saved["runs"][0]["name"]]
    assert json.loads(path.read_text())["complete"] is False
    # other settings: nothing is kept
    capsys.readouterr()
    runner.run_experiment("ml100k_preference_shots", tiny=True, sets=sets + ["lr=0.01"], out=out,
                          adapters=adapters, resume=True)
    printed = capsys.readouterr().out
    assert "settings changed" in printed and "kept from the previous results" not in printed


def test_resume_continues_a_run_stopped_mid_way_from_its_newest_checkpoint(tiny_task_model, tmp_path, capsys):
    sets = [f"model={tiny_task_model}", "threads=1", "max_steps=4", "checkpoint_every=1"]
    out, adapters = tmp_path / "results", tmp_path / "adapters"
    kw = {"tiny": True, "out": out, "adapters": adapters, "only": ["shots-16"]}
    whole = runner.run_experiment("ml100k_preference_shots", sets=sets, **kw)["runs"][0]
    run_dirs = list((tmp_path / "adapters-checkpoints" / "shots-16").glob("*/*"))
    assert len(run_dirs) == 1  # each run checkpoints in a folder of its own
    newest = sorted(run_dirs[0].glob("checkpoint-*"))
    assert [c.name for c in newest] == ["checkpoint-3", "checkpoint-4"]
    import shutil

    shutil.rmtree(newest[-1])  # stopped after step 3's checkpoint, before step 4 and the results
    (out / "ml100k_preference_shots.json").unlink()
    capsys.readouterr()
    # more threads and checkpoints differently: settings that change nothing computed neither block the
    # checkpoint nor, below, the finished runs
    again = runner.run_experiment("ml100k_preference_shots", sets=sets[:2] + ["max_steps=4", "checkpoint_every=2"],
                                  resume=True, **kw)["runs"][0]
    printed = capsys.readouterr().out
    assert "shots-16: continuing from its newest checkpoint" in printed and "checkpoint-3" in printed
    assert again["test"] == whole["test"] and again["losses"][-1] == whole["losses"][-1]
    kept = runner.run_experiment("ml100k_preference_shots", sets=sets[:2] + ["max_steps=4", "threads=2"],
                                 resume=True, **kw)["runs"][0]
    assert "kept from the previous results" in capsys.readouterr().out and kept == again


def test_only_runs_the_named_runs_and_the_baselines_and_stays_incomplete(tiny_task_model, tmp_path, capsys):
    sets = [f"model={tiny_task_model}", "threads=1"]
    kw = {"tiny": True, "sets": sets, "out": tmp_path / "r", "adapters": tmp_path / "a"}
    part = runner.run_experiment("ml100k_fusion", only=["cf-seed42"], **kw)
    assert [r["name"] for r in part["runs"]] == ["cf-seed42"] and part["runs"][0]["overrides"]["fusion"] == "cf"
    assert set(part["baselines"]["0"]) == {"popularity", "sasrec"} and part["complete"] is False
    full = runner.run_experiment("ml100k_fusion", resume=True, **kw)  # adds the rest, keeps cf-seed42
    assert [r["name"] for r in full["runs"]] == ["text-seed42", "cf-seed42"] and full["complete"] is True
    assert full["runs"][1] == part["runs"][0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        runner.main(["ml100k_fusion", "--tiny", "--only", "cf-seed99", "--out", str(tmp_path / "r2")])
    assert exit_.value.code == 2 and not (tmp_path / "r2").exists()
    assert "--only: no run cf-seed99 in ml100k_fusion; runs: text-seed42, cf-seed42" in capsys.readouterr().err


def test_a_bad_baselines_section_fails_before_any_run(tmp_path, monkeypatch, capsys):
    spec = runner.load_spec("ml100k_preference_shots", True, [])
    spec["baselines"] = {"models": ["bpr"]}  # bpr ranks only
    monkeypatch.setattr(runner, "load_spec", lambda *a: spec)
    with pytest.raises(SystemExit) as exit_:
        runner.main(["ml100k_preference_shots", "--tiny", "--out", str(tmp_path / "r"),
                     "--adapters", str(tmp_path / "a")])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["experiments: error: baseline 'bpr' does not do preference; it does ranking"]
    assert not (tmp_path / "r").exists() and not (tmp_path / "a").exists()


def test_an_experiment_whose_baselines_fail_is_not_complete_and_resume_adds_them(tiny_task_model, tmp_path,
                                                                                 monkeypatch, capsys):
    sets = [f"model={tiny_task_model}", "threads=1"]
    out, adapters = tmp_path / "results", tmp_path / "adapters"
    path = out / "ml100k_preference_shots.json"
    assert "baselines" in runner.load_spec("ml100k_preference_shots", True, [])
    real = runner.baselines_on_same_examples

    def crash(*args, **kwargs):
        raise RuntimeError("a baseline crashed")

    monkeypatch.setattr(runner, "baselines_on_same_examples", crash)
    with pytest.raises(RuntimeError):
        runner.run_experiment("ml100k_preference_shots", tiny=True, sets=sets, out=out, adapters=adapters)
    saved = json.loads(path.read_text())
    assert saved["complete"] is False and "baselines" not in saved
    assert len(saved["runs"]) == len(runner.load_spec("ml100k_preference_shots", True, [])["runs"])
    monkeypatch.setattr(runner, "baselines_on_same_examples", real)
    capsys.readouterr()
    again = runner.run_experiment("ml100k_preference_shots", tiny=True, sets=sets, out=out, adapters=adapters,
                                  resume=True)
    assert "kept from the previous results" in capsys.readouterr().out
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in saved["runs"]]  # nothing re-run
    final = json.loads(path.read_text())
    assert final["complete"] is True and final["baselines"]


def test_transfer_matrix_at_smoke_test_size(tiny_task_model, tmp_path, capsys):
    import transfer

    kw = dict(tiny=True, sets=[f"model={tiny_task_model}"], out=tmp_path / "results", adapters=tmp_path / "adapters")
    first = transfer.run("transfer", **kw)
    m = first["matrix"]
    assert m["rows"] == ["base", "news", "video", "news+video"] and m["cols"] == ["news", "video", "shop"]
    assert m["metric"] == {"news": "auc", "video": "auc", "shop": "ndcg@10"}  # a ranking target: NDCG@10
    assert m["ci95_half_width"]["shop"] is None and m["ci95_half_width"]["news"] > 0
    assert all(0 <= m["value"][r][c] <= 1 for r in m["rows"] for c in m["cols"])
    assert m["n"] == {"news": 8, "video": 8, "shop": 4}
    assert m["seeds"]["news"] == [42, 43] and m["seeds"]["base"] == []
    per_seed = [first["cells"][f"news@{s} -> video"]["value"] for s in (42, 43)]
    assert m["per_seed"]["news"]["video"] == per_seed and m["value"]["news"]["video"] == pytest.approx(
        sum(per_seed) / 2)
    assert m["gain_over_base"]["news"]["video"] == m["value"]["news"]["video"] - m["value"]["base"]["video"]
    assert len([k for k in first["cells"] if k.startswith("base ")]) == 3  # the base is scored once, not per seed
    combined = json.loads((tmp_path / "adapters" / "news+video-seed43" / "recpeft.json").read_text())
    assert [s["weight"] for s in combined["combination"]["sources"]] == [0.5, 0.5]
    capsys.readouterr()
    again = transfer.run("transfer", resume=True, **kw)  # every adapter and cell kept
    assert again["cells"] == first["cells"] and "[transfer]" not in capsys.readouterr().out


def test_transfer_resume_keeps_the_cells_of_unchanged_rows_and_targets():
    import transfer

    spec = transfer.load_spec("transfer", True, [])
    old = {"spec": spec}
    rows, targets = transfer.unchanged(old, {**spec, "seeds": [42], "tiny": {}})
    assert rows == {"base", "news", "video", "news+video"} and targets == {"news", "video", "shop"}
    more = {**spec, "targets": spec["targets"] + [{"name": "new", "domain": "news"}]}
    assert transfer.unchanged(old, more)[1] == {"news", "video", "shop"}  # only the new column runs
    other = {**spec, "sources": [spec["sources"][0], {**spec["sources"][1], "train": {"max_steps": 9}}]}
    assert transfer.unchanged(old, other)[0] == {"base", "news"}  # video retrains, and so does news+video
    assert transfer.unchanged(old, {**spec, "eval": {"history_len": 5}}) == (set(), set())
    cells = {"base -> news": 1, "news@42 -> news": 2, "video@42 -> news": 3, "news+video@42 -> shop": 4}
    assert transfer.kept_cells({"cells": cells}, {"base", "news"}, {"news"}) == {"base -> news": 1,
                                                                                "news@42 -> news": 2}


def test_paired_gain_finds_a_real_gain_and_none_between_equal_runs(tmp_path, capsys):
    """experiments/paired_gain.py: AUCs as recpeft computes them, a gain whose interval excludes 0 when the new
    runs' scores carry the labels, and exactly 0 between identical runs; mismatched pairs are refused."""
    import numpy as np
    import paired_gain

    from recpeft.evaluation.metrics import auc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    base = [rng.normal(size=400) + 0.3 * labels for _ in range(2)]
    new = [rng.normal(size=400) + 1.0 * labels for _ in range(2)]
    runs = [{"name": f"{kind}{i}", "outputs": {"labels": labels.tolist(), "scores": s.tolist()}}
            for kind, group in (("base", base), ("new", new)) for i, s in enumerate(group)]
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"runs": runs}))
    out = paired_gain.main([str(path), "--base", "base0", "base1", "--new", "new0", "new1", "--draws", "300"])
    want = [auc(labels.tolist(), n.tolist()) - auc(labels.tolist(), b.tolist()) for b, n in zip(base, new)]
    assert out["gain_per_seed"] == pytest.approx(want, abs=1e-4)
    assert 0 < out["ci95"][0] < out["mean_gain"] < out["ci95"][1]
    same = paired_gain.main([str(path), "--base", "base0", "--new", "base0", "--draws", "50"])
    assert same["mean_gain"] == 0 and same["ci95"] == [0, 0]
    with pytest.raises(SystemExit):
        paired_gain.main([str(path), "--base", "base0", "--new", "new0", "new1"])
    assert "pair them by seed" in capsys.readouterr().err


def test_paired_gain_resamples_users_when_the_outputs_name_them(tmp_path):
    """A user's examples share a history: with user ids, a draw takes whole users, and five copies of each
    example under one user widen the interval about sqrt(5)-fold over resampling pairs one by one."""
    import numpy as np
    import paired_gain

    rng = np.random.default_rng(1)
    labels = np.repeat(rng.integers(0, 2, 80), 5)  # 80 users, each with 5 copies of one example
    base, new = (np.repeat(rng.normal(size=80), 5) + k * labels for k in (0.3, 1.0))
    users = [f"u{i // 5}" for i in range(400)]

    def interval(with_users: bool) -> dict:
        runs = [{"name": name, "outputs": {"labels": labels.tolist(), "scores": s.tolist(),
                                           **({"users": users} if with_users else {})}}
                for name, s in (("base", base), ("new", new))]
        path = tmp_path / f"exp{with_users}.json"
        path.write_text(json.dumps({"runs": runs}))
        return paired_gain.main([str(path), "--base", "base", "--new", "new", "--draws", "400"])

    by_pair, by_user = interval(False), interval(True)
    assert by_pair["resampled"] == "pairs" and by_user["resampled"] == "users (80)"
    assert by_user["mean_gain"] == by_pair["mean_gain"]
    width = lambda out: out["ci95"][1] - out["ci95"][0]  # noqa: E731
    assert width(by_user) > 1.7 * width(by_pair)
    # a run saved before outputs named users borrows them from the run it is paired with
    mixed = json.loads((tmp_path / "expTrue.json").read_text())
    del mixed["runs"][0]["outputs"]["users"]
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    borrowed = paired_gain.main([str(tmp_path / "mixed.json"), "--base", "base", "--new", "new", "--draws", "400"])
    assert borrowed["resampled"] == "users (80)" and borrowed["ci95"] == by_user["ci95"]
    # ... or from any other run of the experiment that scored the same examples
    mixed["runs"][1]["outputs"].pop("users")
    mixed["runs"].append({"name": "later", "outputs": {"labels": labels.tolist(), "scores": base.tolist(),
                                                       "users": users}})
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    borrowed = paired_gain.main([str(tmp_path / "mixed.json"), "--base", "base", "--new", "new", "--draws", "400"])
    assert borrowed["resampled"] == "users (80)" and borrowed["ci95"] == by_user["ci95"]
    mixed["runs"][1]["outputs"]["users"] = users[::-1]
    mixed["runs"][0]["outputs"]["users"] = users
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    with pytest.raises(SystemExit):  # two runs that name different users for the same pairs
        paired_gain.main([str(tmp_path / "mixed.json"), "--base", "base", "--new", "new"])
    # a run of another results file, named OTHER:RUN, pairs as if it were in the first
    (tmp_path / "other.json").write_text((tmp_path / "expFalse.json").read_text())
    across = paired_gain.main([str(tmp_path / "expFalse.json"), "--base", f"{tmp_path / 'other.json'}:base",
                               "--new", "new", "--draws", "400"])
    assert across["mean_gain"] == by_pair["mean_gain"]
    with pytest.raises(SystemExit):  # these labels are not the news sample's test pairs: no users from it
        paired_gain.main([str(tmp_path / "expFalse.json"), "--base", "base", "--new", "new", "--users-of", "news"])


def test_token_scale_probe_shows_a_bare_vector_acts_at_full_size(tiny_model):
    """experiments/token_scale_probe.py on the tiny (RMS-normalised) model: a bare vector at 3% of the embeddings'
    RMS moves the logits several times more than the same 3% added to a word."""
    import token_scale_probe

    change = token_scale_probe.main(["--model", str(tiny_model)])["mean_abs_logit_change"]
    assert change["bare, 3% RMS"] > 3 * change["word + 3% RMS"]
    assert change["bare, 3% RMS"] > 0.3 * change["bare, full RMS"]


def test_cf_oracle_reads_the_history_under_its_polarity(capsys):
    """On the video sample, ALS factors of the history, split into liked and disliked, carry what the
    target's own vector does not (0.76 against 0.57 when fitted on every training example)."""
    import cf_oracle

    out = cf_oracle.main(["--data", "none", "--train-samples", "64"])
    every = f", fitted on {out['train_examples']}"
    full = {k.removesuffix(every): v for k, v in out.items() if k.endswith(every)}
    assert out["test_pairs"] == 600 and set(full) >= {"cf:als [v]", "cf:als+stats [v, liked, disliked]"}
    assert full["cf:als [v, liked, disliked]"] > full["cf:als [v]"] + 0.1
    assert all(0.0 <= v <= 1.0 for v in full.values())


def test_dp_noise_gives_the_sigma_of_the_recorded_run_and_refuses_a_bad_schedule():
    """256 examples, batch 8, 64 steps at ε 8 is the ml100k_dp protocol, whose run recorded σ 0.61
    (docs/privacy.md); a larger expected batch means less noise on the mean gradient."""
    import dp_noise

    small, large = dp_noise.main(["--schedule", "256:8:64", "2048:1024:8"])
    assert abs(small["sigma"] - 0.609) < 0.002 and small["epochs"] == 2.0
    assert large["noise_norm_over_clip"] < 1 < small["noise_norm_over_clip"]
    with pytest.raises(SystemExit):
        dp_noise.main(["--schedule", "256:8"])


def test_privacy_utility_keeps_two_dp_recipes_at_one_epsilon_apart():
    def run(name, seed, eps, auc, secs, micro_batches=4, cpu="Xeon"):  # 2 steps each
        return {"name": f"{name}-seed{seed}", "kind": "lora", "test": {"auc": auc, "n": 10},
                "overrides": {"seed": seed, "dp_epsilon": eps}, "seconds_per_micro_batch": secs,
                "losses": [0.7] * micro_batches, "steps": 2,
                "processor": cpu, "privacy": {"epsilon_spent": eps - 0.01} if eps else None}

    runs = [run("non-private", 42, None, 0.72, 10.0), run("eps8", 42, 8, 0.68, 12.0),
            run("eps8-b1024", 42, 8, 0.70, 15.0), run("non-private", 43, None, 0.70, 10.0),
            run("eps8", 43, 8, 0.55, 11.0), run("eps8-b1024", 43, 8, 0.71, 10.0),
            # a DP run whose Poisson batches came in 5 smaller pieces: faster per piece, slower per step
            run("eps3", 42, 3, 0.60, 9.0, micro_batches=5), run("eps3", 43, 3, 0.60, 9.0, cpu="EPYC")]
    table = runner.privacy_utility({"runs": runs})
    assert [(r["config"], r["epsilon"], r["seeds"]) for r in table] == [
        ("eps3", 3, 2), ("eps8", 8, 2), ("eps8-b1024", 8, 2), ("non-private", None, 2)]
    assert table[1]["mean"] == pytest.approx(0.615) and table[2]["mean"] == pytest.approx(0.705)
    assert table[2]["step_time_vs_non_private"] == pytest.approx(1.25)  # (1.5 + 1.0) / 2, each against its seed
    assert table[2]["epsilon_spent"] == [7.99, 7.99]
    # per optimiser step (9 s x 5 pieces / 2 steps vs 10 s x 4 / 2), and only against the same CPU's run
    assert table[0]["step_time_vs_non_private"] == pytest.approx(1.125)
    # A run resumed on another host (or one that did not record its CPU) is not timed against this one's
    runs[5] = run("eps8-b1024", 43, 8, 0.71, 5.0, cpu="EPYC")
    runs[4] = run("eps8", 43, 8, 0.55, 11.0, cpu=None)
    table = runner.privacy_utility({"runs": runs})
    assert table[2]["step_time_vs_non_private"] == pytest.approx(1.5)
    assert table[1]["step_time_vs_non_private"] == pytest.approx(1.2)
    runs[0] = run("non-private", 42, None, 0.72, 10.0, cpu=None)
    assert runner.privacy_utility({"runs": runs[:3]})[0]["step_time_vs_non_private"] is None
