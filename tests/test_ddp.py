"""Real 2-process gloo DDP on CPU through `recpeft train --num-processes 2`: ranks stay identical, rank 0
writes; evaluation is shared by the processes and equals one process's; Ctrl-C checkpoints once and exits
130; a killed run resumes to the uninterrupted adapter. The 2-process runs share one reference run."""

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import _hooks
import pytest
import shard_probe
import torch
from safetensors.torch import load_file
from test_resume import adapter, assert_only_whole_checkpoints, assert_same_adapter, cli_args, settings

from recpeft.training import checkpoint as ckpts

TWO = {"num_processes": 2, "test_samples": 20}  # the test set: 3 batches of 8, shared unevenly


def run_two(values: dict, cwd, new_session: bool = False, **hooks) -> subprocess.CompletedProcess:
    """`recpeft train` as a user runs it, through the test driver with its hooks (tests/_hooks.py; the
    workers run through it too); new_session: in a process group of its own, as in a terminal."""
    return subprocess.run(_hooks.command("train", *cli_args(values), **hooks), cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "RECPEFT_HOME": str(cwd / "home")}, timeout=300,
                          start_new_session=new_session)


def the_line(out: subprocess.CompletedProcess) -> str:
    """The one `recpeft` line on stderr, which must be its last line; no traceback, no launcher report."""
    lines = [line for line in out.stderr.splitlines() if line.startswith("recpeft")]
    assert len(lines) == 1 and lines[0] == out.stderr.strip().splitlines()[-1], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def two_reference(tiny_model, small_news, tmp_path_factory):
    """An uninterrupted 2-process run (40 steps over 3 epochs, dropout on): (folder, recpeft.json, process)."""
    work = tmp_path_factory.mktemp("two-reference")
    (work / "dump").mkdir()
    out = run_two(settings(tiny_model, small_news, work, **TWO), work, dump_rank_weights=str(work / "dump"))
    assert out.returncode == 0, out.stderr[-3000:]
    return work, json.loads((work / "out" / "recpeft.json").read_text()), out


def test_two_process_ddp_keeps_ranks_identical_and_saves_rank0(two_reference):
    work, meta, out = two_reference
    assert "2 process(es)" in out.stdout and "effective batch 16 = 4 x 2 accumulation x 2" in out.stdout
    sums = meta["metrics"]["rank_param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both ranks hold the same weights
    saved = adapter(work / "out")
    saved_sum = sum(t.double().sum().item() for t in saved.values())
    assert abs(saved_sum - sums[0]) <= 1e-9 * max(1.0, abs(sums[0]))  # the file is rank 0's weights
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)  # and they were trained
    rank0, rank1 = (load_file(str(work / "dump" / f"rank{i}.safetensors")) for i in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    by_suffix = {k.replace(".default", ""): v for k, v in rank0.items()}
    assert all(torch.equal(t, by_suffix[k]) for k, t in saved.items())  # the file is exactly rank 0's weights
    assert out.stdout.count("adapter written to") == 1  # only the main process writes and reports


def test_a_user_error_the_workers_would_hit_is_one_line_from_the_parent(tiny_model, tmp_path):
    """Found only once the model is loaded (unknown target module): the launcher's single-process dry
    run reports it as one line, exit 2, before any worker starts; nothing is written."""
    env = {**os.environ, "RECPEFT_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "recpeft", "train", "--model", str(tiny_model), "--num-processes", "2",
         "--output-dir", "ddp", "--target-modules", "nonexistent_proj", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("recpeft: error: ") and "nonexistent_proj" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "ddp").exists() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------ evaluation shared by the processes


def test_sharded_evaluation_scores_each_unit_once_and_matches_one_process(tiny_task_model, tmp_path):
    """Every scoring loop (batches of rows, ranking users, generation) in 2 gloo processes: each scores
    its share, both end with all outputs in order and one process's metrics."""
    import torch.multiprocessing as mp

    from recpeft.evaluation import sharding

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(shard_probe.worker, args=(2, port, str(tiny_task_model), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    with sharding.across(SimpleNamespace(process_index=0, num_processes=1)) as one:
        alone = shard_probe.evaluate_cases(str(tiny_task_model))
    from recpeft.data.formats.csvdir import load_sample

    users = alone["preference"]["outputs"]["users"]  # each pair's user, for a per-user bootstrap (paired_gain.py)
    assert len(users) == len(alone["preference"]["outputs"]["labels"]) == shard_probe.LIMIT
    assert set(users) <= {x.user_id for x in load_sample("video").interactions}
    for task, _, _ in shard_probe.CASES:
        for got in (r["results"][task] for r in ranks):
            assert got["outputs"].keys() == alone[task]["outputs"].keys()
            for key, values in alone[task]["outputs"].items():
                try:  # scores: numbers; generated text and category lists: compared as they are
                    torch.testing.assert_close(torch.tensor(got["outputs"][key]), torch.tensor(values), atol=1e-6,
                                               rtol=0, msg=f"{task} {key}")
                except (TypeError, ValueError):
                    assert got["outputs"][key] == values, (task, key)
            assert got["metrics"].keys() == alone[task]["metrics"].keys()
            for key, value in alone[task]["metrics"].items():
                assert math.isclose(got["metrics"][key], value, abs_tol=1e-6) or math.isnan(value), (task, key)
    # 3 batches for each row-batched task, shared 2/1; ranking's 9 users in one group alone, in 5 + 4 on two
    assert [r["units"] for r in ranks] == [2 + 2 + 1 + 2, 1 + 1 + 1 + 1] and one.units == 3 + 3 + 1 + 3


def test_two_process_evaluation_is_shared_and_equals_one_process(two_reference):
    from recpeft.evaluation.evaluate import evaluate

    work, meta, _ = two_reference
    m = meta["metrics"]
    # evaluations: untrained valid (2 batches) and test (3), valid at steps 5..40 (8 x 2), the adapter's test (3)
    assert m["eval_units_per_process"] == [1 + 2 + 8 + 2, 1 + 1 + 8 + 1]
    one = evaluate(str(work / "out"), limit=20, threads=1, show_progress=False, write=False).metrics
    assert one["n"] == m["test_n"] == 20
    for key in ("auc", "logloss", "positive_rate"):
        assert abs(one[key] - m[f"test_{key}"]) <= 1e-6, key
    base = evaluate("none", model=meta["base_model"]["name"], domain="news", data=meta["train_config"]["data"],
                    split="valid", limit=16, threads=1, show_progress=False, write=False).metrics
    assert abs(base["auc"] - m["valid_auc_base"]) <= 1e-6


# ------------------------------------------------------------------------ Ctrl-C, a kill, and resume


def test_ctrl_c_then_a_kill_then_resume_give_the_uninterrupted_adapter(two_reference, tiny_model, small_news,
                                                                       tmp_path):
    ref_work, ref_meta, _ = two_reference
    values = settings(tiny_model, small_news, tmp_path, **TWO)
    # Ctrl-C in a terminal at step 7: SIGINT to the command's process group, not to the workers (torchrun
    # gives them sessions of their own). It reaches rank 1 while it waits in step 7's all-reduce, so the
    # ranks disagree there until they agree. Checkpoints off: the interrupt's is the only one.
    out = run_two({**values, "checkpoint_every": 0}, tmp_path, new_session=True, kill_at="step:7",
                  kill_signal="INT", kill_rank=0, kill_target="command")
    assert out.returncode == 130, out.stderr[-3000:]
    line = the_line(out)
    assert line.startswith("recpeft: interrupted at step 7; checkpoint saved in ")
    assert "--num-processes 2" in line and line.endswith(" --resume latest")
    (run,) = (tmp_path / "runs" / "news").iterdir()
    (saved,) = ckpts.checkpoints_in(run)
    assert saved.name == "checkpoint-7" and len(ckpts.load(saved).state["rng"]) == 2  # both processes' RNGs
    assert not (tmp_path / "out").exists()
    # resumed, then rank 1 SIGKILLed at step 23 (torchrun stops rank 0): checkpoints every 3 steps up to 21
    killed = run_two({**values, "resume": "latest"}, tmp_path, kill_at="step:23", kill_rank=1)
    assert killed.returncode not in (0, 130) and not (tmp_path / "out").exists()
    assert ckpts.checkpoints_in(run)[-1].name == "checkpoint-21"
    assert_only_whole_checkpoints(tmp_path / "runs")
    done = run_two({**values, "resume": "latest"}, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint-21: step 21, epoch 1, batch 6" in done.stdout  # mid-epoch, past an epoch boundary
    assert_same_adapter(adapter(tmp_path / "out"), adapter(ref_work / "out"))
    assert json.loads((tmp_path / "out" / "recpeft.json").read_text())["history"] == ref_meta["history"]


@pytest.mark.parametrize("ending, destroyed", [(None, True), (SystemExit(0), True), (SystemExit(130), False),
                                               (RuntimeError("boom"), False)])
def test_a_worker_destroys_its_process_group_only_when_it_ended_well(ending, destroyed):
    """A gloo worker exiting with its group alive can abort at interpreter shutdown (CI saw SIGABRT):
    a run that ended well, or stopped together (exit 0), destroys the group; an error leaves it."""
    import torch.distributed as dist

    from recpeft.training.launch import closing_process_group

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        with pytest.raises(type(ending)) if ending else contextlib.nullcontext():
            with closing_process_group():
                if ending:
                    raise ending
        assert dist.is_initialized() is not destroyed
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
