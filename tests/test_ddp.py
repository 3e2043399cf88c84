"""Real 2-process gloo DDP on CPU through `recpeft train --num-processes 2`."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def test_two_process_ddp_keeps_ranks_identical_and_saves_rank0(tiny_model, tmp_path):
    (tmp_path / "dump").mkdir()
    env = {**os.environ, "RECPEFT_HOME": str(tmp_path / "home"), "RECPEFT_DUMP_RANK_WEIGHTS": str(tmp_path / "dump")}
    out = subprocess.run(
        [sys.executable, "-m", "recpeft", "train", "--model", str(tiny_model), "--num-processes", "2",
         "--output-dir", "ddp", "--max-steps", "6", "--batch-size", "4", "--eval-every", "6", "--eval-samples",
         "8", "--test-samples", "8", "--lr", "0.01", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stdout and "effective batch 8 = 4 x 1 accumulation x 2" in out.stdout
    metrics = json.loads((tmp_path / "ddp" / "recpeft.json").read_text())["metrics"]
    sums = metrics["rank_param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both ranks hold the same weights
    saved = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    saved_sum = sum(t.double().sum().item() for t in saved.values())
    assert abs(saved_sum - sums[0]) <= 1e-9 * max(1.0, abs(sums[0]))  # the file is rank 0's weights
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)  # and they were trained
    rank0, rank1 = (load_file(str(tmp_path / "dump" / f"rank{i}.safetensors")) for i in (0, 1))
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
