"""Checkpoints and exact resume: a run killed (SIGKILL) or interrupted (SIGINT) at some step and resumed
ends with the same adapter as an uninterrupted run at the same seed; kills during saves leave only whole
folders. The killed runs are real `recpeft train` subprocesses; reference and resumed runs run in-process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import _hooks
import pytest
import torch
from conftest import run_settings
from safetensors.torch import load_file

from recpeft.config import build_config
from recpeft.errors import UserError
from recpeft.training import checkpoint as ckpts
from recpeft.training.trainer import train

# 285 training examples in batches of 4, 2 micro-batches per step: 36 steps an epoch, so 40 steps cross
# an epoch boundary. Dropout on, so a wrong RNG state after resume would show.
FLAGS = {"domain": "news", "max_steps": 40, "batch_size": 4, "grad_accum": 2, "lr": 0.02, "eval_every": 5,
         "eval_samples": 16, "test_samples": 16, "patience": 0, "lora_dropout": 0.1, "threads": 1,
         "checkpoint_every": 3, "keep_checkpoints": 2}


def settings(tiny_model, data, work: Path, **extra) -> dict:
    return run_settings(FLAGS, tiny_model, data, work, **extra)


def cli_args(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def run_cli(args: list[str], cwd: Path, **hooks) -> subprocess.CompletedProcess:
    """`recpeft train *args` through the test driver, with its hooks (tests/_hooks.py: kill_at=...)."""
    return subprocess.run(_hooks.command("train", *args, **hooks), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "RECPEFT_HOME": str(cwd / "home")}, timeout=600)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


def assert_only_whole_checkpoints(runs: Path) -> None:
    """Every visible checkpoint folder loads completely (hidden temp folders are not checkpoints)."""
    for run in (runs / "news").iterdir():
        for c in ckpts.checkpoints_in(run):
            ckpts.load(c)


@pytest.fixture(scope="module")
def reference(tiny_model, small_news, tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    result = train(build_config(**settings(tiny_model, small_news, work)), show_progress=False)
    runs = list((work / "runs" / "news").iterdir())
    assert len(runs) == 1 and [c.name for c in ckpts.checkpoints_in(runs[0])] == ["checkpoint-39", "checkpoint-40"]
    return result, adapter(work / "out")


# Three kill points for CI (drawn once from a seeded RNG across the run, one past the epoch boundary), plus a
# kill after the adapter is written but before it is renamed into place; experiments/kill_resume.py runs 10.
KILLS = [f"step:{k}" for k in sorted(random.Random(6).sample(range(1, 40), 2))] + ["step:38", "rename:out"]


@pytest.mark.parametrize("kill_at", KILLS)
def test_sigkill_then_resume_gives_the_uninterrupted_adapter(kill_at, reference, tiny_model, small_news, tmp_path):
    ref_result, ref_adapter = reference
    values = settings(tiny_model, small_news, tmp_path)
    killed = run_cli(cli_args(values), tmp_path, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # killed before the adapter was renamed into place: nothing, not half
    assert_only_whole_checkpoints(tmp_path / "runs")
    resumed = train(build_config(**values, resume="latest"), show_progress=False)
    assert_same_adapter(adapter(tmp_path / "out"), ref_adapter)
    assert resumed.history == ref_result.history and resumed.losses == ref_result.losses
    leftovers = [p for p in [*tmp_path.iterdir(), *(tmp_path / "runs" / "news").rglob("*")] if p.name.startswith(".")]
    assert leftovers == []  # the killed save's temp folder is gone


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(reference, tiny_model, small_news, tmp_path):
    _, ref_adapter = reference
    values = settings(tiny_model, small_news, tmp_path)
    out = run_cli(cli_args(values), tmp_path, kill_at="step:7", kill_signal="INT")
    assert out.returncode == 130, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("recpeft")]
    assert len(lines) == 1 and lines[0] == out.stderr.strip().splitlines()[-1]
    assert lines[0].startswith("recpeft: interrupted at step 7; checkpoint saved in ")
    assert lines[0].endswith(" --resume latest") and "resume with: recpeft train --domain news" in lines[0]
    saved = Path(lines[0].split("checkpoint saved in ")[1].split(";")[0])
    assert saved.name == "checkpoint-7" and ckpts.load(saved).state["step"] == 7
    assert not (tmp_path / "out").exists()
    train(build_config(**values, resume="latest"), show_progress=False)
    assert_same_adapter(adapter(tmp_path / "out"), ref_adapter)


def test_resume_refuses_other_settings_and_missing_checkpoints(reference, tiny_model, small_news, tmp_path):
    values = settings(tiny_model, small_news, tmp_path)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(build_config(**values, resume="latest"), show_progress=False)
    train(build_config(**{**values, "max_steps": 3, "checkpoint_every": 0}), show_progress=False)
    with pytest.raises(UserError, match=r"other settings \(lr 0.02 there, 0.03 now\)"):
        train(build_config(**{**values, "max_steps": 3, "lr": 0.03}, resume="latest"), show_progress=False)
    # what may differ: where things go, how often checkpoints are taken
    train(build_config(**{**values, "max_steps": 3, "checkpoint_every": 1, "output_dir": str(tmp_path / "o2")},
                       resume="latest"), show_progress=False)
    assert (tmp_path / "o2" / "recpeft.json").is_file()


def test_only_the_newest_checkpoints_are_kept(reference, tiny_model, small_news, tmp_path):
    values = settings(tiny_model, small_news, tmp_path, max_steps=7, checkpoint_every=1, keep_checkpoints=3)
    train(build_config(**values), show_progress=False)
    (run,) = (tmp_path / "runs" / "news").iterdir()
    assert [c.name for c in ckpts.checkpoints_in(run)] == ["checkpoint-5", "checkpoint-6", "checkpoint-7"]
    files = {p.name for p in (run / "checkpoint-7").iterdir()}
    assert files == {"state.json", "weights.safetensors", "best.safetensors", "optimizer.safetensors",
                     "rng.safetensors"}  # no pickle anywhere


def test_adalora_allocator_state_survives_a_resume(tiny_model, small_news, tmp_path):
    values = settings(tiny_model, small_news, tmp_path, method="adalora", max_steps=12, checkpoint_every=4,
                      keep_checkpoints=5, init_r=4, target_r=2, tinit=2, tfinal=3)
    first = train(build_config(**values), show_progress=False)
    reference_adapter = adapter(tmp_path / "out")
    (run,) = (tmp_path / "runs" / "news").iterdir()
    assert (run / "checkpoint-8" / "adalora.safetensors").is_file()
    again = train(build_config(**values, resume=str(run / "checkpoint-8")), show_progress=False)
    assert_same_adapter(adapter(tmp_path / "out"), reference_adapter)
    assert again.metrics["ranks"] == first.metrics["ranks"]


# --------------------------------------------------------------------------- kills during an adapter save

SAVE_SNIPPET = """
import sys
from pathlib import Path
from _hooks import install
from recpeft.adapter_meta import AdapterMeta, BaseModelInfo
from recpeft.artifacts import save_adapter_dir

def weights(folder):
    (folder / "adapter_model.safetensors").write_bytes(sys.argv[2].encode() * 1000)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')

install(kill_at=sys.argv[3] or None)
meta = AdapterMeta(domain="news", method="lora", base_model=BaseModelInfo(name="x"), extra={"version": sys.argv[2]})
save_adapter_dir(weights, Path(sys.argv[1]), meta, "card " + sys.argv[2])
"""


def save_in_subprocess(out: Path, version: str, kill_at: str | None = None) -> int:
    here = Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1]), str(here.parent)])}
    return subprocess.run([sys.executable, "-c", SAVE_SNIPPET, str(out), version, kill_at or ""], env=env,
                          timeout=120).returncode


@pytest.mark.parametrize("kill_at", ["rename:news", "swap:news"])
def test_a_kill_during_an_adapter_save_leaves_the_old_adapter_or_nothing(kill_at, tmp_path):
    out = tmp_path / "adapters" / "news"
    assert save_in_subprocess(out, "first") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert save_in_subprocess(out, "second", kill_at) == -signal.SIGKILL
    visible = [p for p in out.parent.iterdir() if not p.name.startswith(".")]
    if out.exists():  # killed before the swap: the previous adapter, byte for byte
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:  # killed between moving the old one aside and renaming the new one in: nothing
        assert kill_at.startswith("swap") and visible == []
    assert save_in_subprocess(out, "third") == 0  # the next save completes and clears the dead save's leftovers
    assert b"third" in (out / "adapter_model.safetensors").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["news"]


def test_a_kill_before_the_first_save_leaves_nothing(tmp_path):
    out = tmp_path / "adapters" / "news"
    assert save_in_subprocess(out, "first", "rename:news") == -signal.SIGKILL
    assert not out.exists()


def test_an_older_checkpoint_without_a_setting_means_what_its_code_did():
    """fusion_context came with default "history"; a checkpoint written before it had none, so resuming it with
    --fusion-context none is the same run and with today's default it is not (instead of a size mismatch later)."""
    from recpeft.config import TrainConfig

    saved = TrainConfig(fusion="cf").to_dict()
    del saved["fusion_context"]
    assert ckpts.config_differences(saved, TrainConfig(fusion="cf", fusion_context="none")) == []
    assert ckpts.config_differences(saved, TrainConfig(fusion="cf")) == ["fusion_context 'none' there, 'history' now"]
