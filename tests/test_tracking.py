"""Training logs and `recpeft runs`: TensorBoard scalars land under the run folder with the right steps
and values, `--log-with none` writes none, a SIGKILLed run resumed continues its log with every step once,
and the runs listing tells finished, interrupted and crashed runs apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import _hooks
import pytest
import torch
from conftest import run_settings

from recpeft.cli.runs import list_runs
from recpeft.config import build_config
from recpeft.errors import Interrupted
from recpeft.training.trainer import train

# 285 training examples, batches of 4, 2 micro-batches per optimiser step; dropout on, so a resume that
# restored the wrong RNG would log other losses than the uninterrupted run.
FLAGS = {"domain": "news", "max_steps": 6, "batch_size": 4, "grad_accum": 2, "lr": 0.02, "warmup_ratio": 0.34,
         "eval_every": 3, "eval_samples": 16, "test_samples": 16, "patience": 0, "lora_dropout": 0.1,
         "threads": 1, "checkpoint_every": 3, "keep_checkpoints": 2}
TRAIN_TAGS = {"train/loss", "train/lr", "perf/tokens_per_s", "perf/examples_per_s", "memory/rss_mib"}


@pytest.fixture(scope="module")
def news(small_news) -> Path:
    return small_news


def settings(tiny_model, data, work: Path, **extra) -> dict:
    return run_settings(FLAGS, tiny_model, data, work, **extra)


def only_run(work: Path) -> Path:
    (run,) = (work / "runs" / "news").iterdir()
    return run


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: (step, value) per tag, orphaned events of a killed run purged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def ui_steps(logdir: Path, tag: str) -> list[int]:
    """The steps TensorBoard's Python data loader (`--load_fast=false`) serves for `tag`."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [e.step for e in acc.Tensors(tag)]


def raw_steps(logdir: Path, tag: str) -> list[int]:
    """Every step written for `tag` in every event file, nothing purged."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for file in sorted(logdir.glob("events.out.tfevents.*")):
        steps += [e.step for e in EventFileLoader(str(file)).Load() for v in e.summary.value if v.tag == tag]
    return steps


def lr_used_per_step(cfg) -> list[float]:
    """The learning rate each optimiser step ran with: AdamW + cosine warm-up schedule, replayed."""
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)
    used = []
    for _ in range(cfg.max_steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return used


def run_cli(args: list[str], cwd: Path, **hooks) -> subprocess.CompletedProcess:
    """`recpeft *args` through the test driver, with its hooks (tests/_hooks.py: kill_at=...)."""
    return subprocess.run(_hooks.command(*args, **hooks), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "RECPEFT_HOME": str(cwd / "home")}, timeout=600)


def cli_args(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


# ----------------------------------------------------------------------------------------- the logs


def test_events_hold_every_step_under_the_run_folder(tiny_model, news, tmp_path):
    cfg = build_config(**settings(tiny_model, news, tmp_path))
    result = train(cfg, show_progress=False)
    run = only_run(tmp_path)
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events and {e.parent for e in events} == {run / "tensorboard"}  # nowhere else
    logged = scalars(run / "tensorboard")
    assert TRAIN_TAGS | {"valid/auc", "valid/logloss"} <= set(logged)
    for tag in TRAIN_TAGS:
        assert [s for s, _ in logged[tag]] == [1, 2, 3, 4, 5, 6], tag
    # each step's loss is the mean of its two micro-batches' losses, in training order
    want = [(result.losses[2 * k] + result.losses[2 * k + 1]) / 2 for k in range(6)]
    assert [v for _, v in logged["train/loss"]] == pytest.approx(want, rel=1e-5)
    assert [v for _, v in logged["train/lr"]] == pytest.approx(lr_used_per_step(cfg), rel=1e-5)
    assert logged["train/lr"][0][1] < logged["train/lr"][1][1]  # warm-up: the logged lr is the one used
    assert all(v > 0 for _, v in logged["perf/tokens_per_s"] + logged["perf/examples_per_s"])
    tokens_per_example = [t / e for (_, t), (_, e) in zip(logged["perf/tokens_per_s"], logged["perf/examples_per_s"])]
    assert all(5 < r < cfg.max_length for r in tokens_per_example)  # prompt lengths, not padding or batch counts
    assert all(100 < v < 100_000 for _, v in logged["memory/rss_mib"])
    # validation: the untrained base at step 0, then every eval_every steps, the values the run judged by
    assert [s for s, _ in logged["valid/auc"]] == [0, 3, 6]
    assert [v for _, v in logged["valid/auc"]] == pytest.approx([h["valid_auc"] for h in result.history], rel=1e-5)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 6 and status["total_steps"] == 6


def test_log_with_none_writes_no_events(tiny_model, news, tmp_path):
    train(build_config(**settings(tiny_model, news, tmp_path, max_steps=3), log_with="none"), show_progress=False)
    run = only_run(tmp_path)
    assert list(tmp_path.rglob("events.out.tfevents.*")) == [] and not (run / "tensorboard").exists()
    assert (run / "checkpoint-3").is_dir()  # the run itself is as before
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_no_run_folder_without_save(tiny_model, news, tmp_path):
    train(build_config(**settings(tiny_model, news, tmp_path, max_steps=2)), save=False, show_progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_sigkilled_run_resumed_logs_every_step_once(tiny_model, news, tmp_path):
    values = settings(tiny_model, news, tmp_path / "killed", max_steps=10, eval_every=5)
    reference = train(build_config(**{**values, "runs_dir": str(tmp_path / "ref" / "runs"),
                                      "output_dir": str(tmp_path / "ref" / "out")}), show_progress=False)
    ref_logged = scalars(only_run(tmp_path / "ref") / "tensorboard")
    assert reference.metrics["steps"] == 10

    (tmp_path / "killed").mkdir()
    killed = run_cli(["train", *cli_args(values)], tmp_path / "killed", kill_at="step:8")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = only_run(tmp_path / "killed")
    (row,) = list_runs(tmp_path / "killed" / "runs")
    assert (row["status"], row["steps"], row["last_checkpoint"]) == ("crashed", 6, "checkpoint-6")
    assert row["tensorboard"] is True
    assert raw_steps(run / "tensorboard", "train/loss") == [1, 2, 3, 4, 5, 6, 7]  # step 7: past the checkpoint

    train(build_config(**values, resume="latest"), show_progress=False)
    assert raw_steps(run / "tensorboard", "train/loss") == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10]
    logged = scalars(run / "tensorboard")  # what TensorBoard shows: the orphaned step 7 purged
    for tag in TRAIN_TAGS:
        assert [s for s, _ in logged[tag]] == list(range(1, 11)), tag
        assert ui_steps(run / "tensorboard", tag) == list(range(1, 11)), tag
    assert [s for s, _ in logged["valid/auc"]] == [0, 5, 10]
    for tag in ("train/loss", "train/lr", "valid/auc"):  # an exact resume logs what the uninterrupted run did
        assert logged[tag] == ref_logged[tag], tag
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # same folder, one file per process
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["resumed_at_steps"] == [6]


def test_a_resumed_runs_event_file_sorts_after_the_killed_runs(tmp_path):
    """TensorBoard reads event files in name order; names start with the second they were made."""
    from torch.utils.tensorboard import SummaryWriter

    from recpeft.training.tracking import _wait_to_sort_last

    for _ in range(2):
        _wait_to_sort_last(tmp_path)
        writer = SummaryWriter(str(tmp_path))
        writer.add_scalar("x", 1.0, 1)
        writer.close()
    first, second = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert int(second.split(".")[3]) > int(first.split(".")[3])


# ----------------------------------------------------------------------------------------- recpeft runs


def test_runs_lists_finished_and_interrupted_runs_newest_first(tiny_model, news, tmp_path):
    values = settings(tiny_model, news, tmp_path)
    train(build_config(**values), show_progress=False)
    time.sleep(1.1)  # run ids are start times to the second
    with _hooks.hooks(kill_at="step:4", kill_signal="INT"), pytest.raises(Interrupted):
        train(build_config(**values), show_progress=False)

    out = run_cli(["runs", "--runs-dir", "runs"], tmp_path)
    assert out.returncode == 0, out.stderr
    header, newer, older = out.stdout.strip().splitlines()
    assert header.split()[:4] == ["DOMAIN", "RUN", "STATUS", "STEPS"]
    assert newer.split()[2:5] == ["interrupted", "4/6", "checkpoint-4"]
    assert older.split()[2:5] == ["finished", "6/6", "checkpoint-6"]
    assert " auc 0." in older and newer.split()[-1].startswith("runs/news/") and " yes " in newer
    assert header.index("STATUS") == newer.index("interrupted") == older.index("finished")  # aligned

    rows = json.loads(run_cli(["runs", "--runs-dir", "runs", "--json", "-d", "news"], tmp_path).stdout)
    assert [r["status"] for r in rows] == ["interrupted", "finished"]
    assert rows[1]["checkpoints"] == ["checkpoint-3", "checkpoint-6"] and rows[1]["best"]["metric"] == "auc"
    assert rows[0]["best"]["step"] in (0, 3) and rows[0]["tensorboard"] is True
    logged = scalars(tmp_path / rows[0]["path"] / "tensorboard")
    assert [s for s, _ in logged["train/loss"]] == [1, 2, 3, 4]  # the interrupted run's log is complete
    empty = run_cli(["runs", "--runs-dir", "runs", "--domain", "video"], tmp_path)
    assert empty.returncode == 0 and empty.stdout.strip() == "no runs under runs/video/"


# ----------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("args, expected", [
    (["train", "--log-with", "wandb"], "unknown log_with 'wandb'; choose from tensorboard, none"),
    (["train", "--config", "c.yaml"], "c.yaml:2: unknown log_with 'tensorbord' (did you mean 'tensorboard'?)"),
    (["runs", "--runs-dir", "nowhere"], "nowhere: no runs folder here"),
    (["runs", "--domain", "newz"], "unknown domain 'newz' (did you mean 'news'?)"),
])
def test_bad_values_are_one_line_and_exit_2(args, expected, tmp_path):
    (tmp_path / "c.yaml").write_text("domain: news\nlog_with: tensorbord\n")
    (tmp_path / "runs").mkdir()
    out = run_cli(args, tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recpeft: error: ") and expected in lines[0], out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "runs"]  # nothing written


def test_yaml_key_and_resume_may_change_it(tmp_path):
    (tmp_path / "c.yaml").write_text("log_with: none\n")
    assert build_config(tmp_path / "c.yaml").log_with == "none"
    assert build_config().log_with == "tensorboard"
    from recpeft.training.checkpoint import RUN_KEYS

    assert "log_with" in RUN_KEYS  # where logs go may change on a resume, like --runs-dir
