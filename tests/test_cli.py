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
