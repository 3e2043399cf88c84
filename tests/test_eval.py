"""`recpeft eval`: an adapter or the untrained base, a table or JSON, a metrics file written atomically."""

import json
import math

import pytest
from test_cli import files_under

from recpeft.config import TrainConfig
from recpeft.evaluation.evaluate import evaluate
from recpeft.training.trainer import train

N = 16


def run_cli(*args, cwd, monkeypatch, capsys):
    """The CLI in this process (its imports are already paid for): (exit code, stdout, stderr)."""
    from recpeft.cli.app import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.argv", ["recpeft", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tiny_task_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("eval-work")
    out = work / "adapters" / "video"
    cfg = TrainConfig(domain="video", task="rating", model=str(tiny_task_model), output_dir=str(out), max_steps=6,
                      batch_size=8, lr=3e-2, eval_every=6, eval_samples=N, test_samples=N, patience=0, threads=1)
    return train(cfg, show_progress=False), work


def test_eval_repeats_the_training_runs_test_score(trained):
    result, work = trained
    report = evaluate(str(work / "adapters" / "video"), limit=N, threads=1, show_progress=False)
    # defaults come from recpeft.json: the same task, domain, data, seed, so the same N test examples
    assert report.payload["task"] == "rating" and report.payload["domain"] == "video"
    assert report.metrics["n"] == N
    assert report.metrics["rmse"] == pytest.approx(result.metrics["test_rmse"], abs=1e-5)
    assert report.metrics["mae"] == pytest.approx(result.metrics["test_mae"], abs=1e-5)
    assert report.path == work / "adapters" / "video.eval-rating-test.json"
    assert json.loads(report.path.read_text())["metrics"] == report.metrics
    base_model = json.loads((work / "adapters" / "video" / "recpeft.json").read_text())["base_model"]["name"]
    base = evaluate("none", model=base_model, domain="video", task="rating", limit=N, threads=1, show_progress=False,
                    write=False)
    assert base.metrics["rmse"] == pytest.approx(result.metrics["test_rmse_base"], abs=1e-5)
    assert base.path is None


def test_eval_cli_prints_a_table_and_writes_json(trained, monkeypatch, capsys):
    _, work = trained
    code, stdout, stderr = run_cli("eval", "--adapter", "adapters/video", "--split", "valid", "--limit", "8",
                                   "--threads", "1", cwd=work, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("recpeft eval — video / rating / valid — adapters/video")
    rmse = next(line for line in lines if line.strip().startswith("rmse"))
    assert "(main; lower is better)" in rmse
    saved = json.loads((work / "adapters" / "video.eval-rating-valid.json").read_text())
    assert saved["split"] == "valid" and saved["metrics"]["n"] == 8
    assert f"{saved['metrics']['rmse']:.4f}" in rmse
    assert not [p for p in (work / "adapters").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_eval_cli_zero_shot_base_as_json(tiny_task_model, tmp_path, monkeypatch, capsys):
    code, stdout, stderr = run_cli("eval", "--adapter", "none", "--model", str(tiny_task_model), "--domain",
                                   "ecommerce", "--task", "ranking", "--limit", "6", "--json", "--threads", "1",
                                   "--out", "m/zero.json", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, stderr
    payload = json.loads(stdout)
    assert payload["adapter"] is None and payload["task"] == "ranking" and payload["main_metric"] == "ndcg@10"
    m = payload["metrics"]
    assert m["n"] == 6 and {"hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "cold_n"} <= set(m)
    assert 0 <= m["hr@1"] <= m["hr@5"] <= m["hr@10"] <= 1 and not math.isnan(m["mrr"])
    assert json.loads((tmp_path / "m" / "zero.json").read_text()) == payload


@pytest.mark.parametrize("args, expected", [
    (["--adapter", "adapters/nowhere"], "no recpeft.json"),
    (["--adapter", "adapters/video", "--task", "click"], "needs click labels"),
    (["--adapter", "adapters/video", "--split", "later"], "unknown split"),
    (["--adapter", "adapters/video", "--out", "adapters"], "is a folder"),
])
def test_eval_user_errors_are_one_line_and_write_nothing(trained, monkeypatch, capsys, args, expected):
    _, work = trained
    before = files_under(work)
    code, _, stderr = run_cli("eval", *args, "--threads", "1", cwd=work, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("recpeft")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in stderr
    assert files_under(work) == before
