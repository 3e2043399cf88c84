"""Each training option is declared once, on its TrainConfig field: flags, help, validation and
docs/train-options.md all follow from the fields, and fail here when they drift apart."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from recpeft.cli import app
from recpeft.cli.options import flag_names
from recpeft.cli.reference import COMMAND, markdown
from recpeft.config import FIELDS, KINDS, TrainConfig, build_config, dump_yaml
from recpeft.errors import UserError
from recpeft.methods.settings import AdaLoraSettings, AdapterSettings, LoraSettings

ROOT = Path(__file__).resolve().parents[1]


def command(name: str):
    """The click command behind a verb of the Typer app."""
    return typer.main.get_command(app).commands[name]


def squash(text: str) -> str:
    """Text without whitespace: click wraps help (even inside hyphenated words) wherever it likes."""
    return "".join(text.split())


def test_every_field_has_help_and_a_train_flag():
    options = {p.name: p for p in command("train").params}
    for name, f in FIELDS.items():
        assert f.metadata.get("help"), f"{name} has no help text"
        assert name in options, f"{name} has no `recpeft train` flag"
        want = [part for names in flag_names(f) for part in names.split("/")]
        got = options[name].opts + options[name].secondary_opts
        assert sorted(got) == sorted(want), name
    assert set(options) == set(FIELDS) | {"config", "dry_run"}


def test_todays_flag_names_and_aliases():
    opts = {p.name: p.opts + p.secondary_opts for p in command("train").params}
    assert sorted(opts["domain"]) == ["--domain", "-d"] and sorted(opts["model"]) == ["--model", "-m"]
    assert sorted(opts["output_dir"]) == ["--output-dir", "-o"] and sorted(opts["config"]) == ["--config", "-c"]
    assert opts["format"] == ["--format"] and opts["dry_run"] == ["--dry-run"]
    assert opts["base_test"] == ["--base-test", "--no-base-test"]
    for name in ("max_grad_norm", "max_length", "dp_max_examples_per_user"):  # were YAML-only / new
        assert opts[name] == ["--" + name.replace("_", "-")]


def test_train_help_shows_each_fields_help_text():
    out = CliRunner().invoke(app, ["train", "--help"])
    assert out.exit_code == 0, out.output
    text = squash(out.output)
    for name, f in FIELDS.items():
        for flag in flag_names(f):
            assert squash(flag) in text, flag
        assert squash(f.metadata["help"]) in text, f"--help lacks the help text of {name}"


def test_docs_table_is_generated_from_the_fields():
    doc = ROOT / "docs" / "train-options.md"
    assert doc.is_file() and doc.read_text(encoding="utf-8") == markdown(), f"regenerate it: {COMMAND}"
    assert COMMAND in markdown().splitlines()[3]
    for name in FIELDS:
        assert f"| `{name}` |" in markdown()


def test_every_flag_reaches_the_config(monkeypatch):
    seen = {}

    def capture(config_file=None, **overrides):
        seen.update(overrides, config_file=config_file)
        raise UserError("stop here")

    monkeypatch.setattr(sys.modules["recpeft.cli.app"], "build_config", capture)  # recpeft.cli.app is the Typer
    args = ["-d", "video", "-m", "tiny", "-o", "out", "--format", "csv", "--max-grad-norm", "0.5",
            "--max-length", "256", "--dp-max-examples-per-user", "3", "--no-base-test", "--item-stats",
            "--target-modules", "q_proj,k_proj", "--bits", "16", "--lr", "0.01"]
    out = CliRunner().invoke(app, ["train", *args])
    assert isinstance(out.exception, UserError), out.output
    assert seen["config_file"] is None
    assert {k: seen[k] for k in ("domain", "model", "output_dir", "format", "max_grad_norm", "max_length",
                                 "dp_max_examples_per_user", "base_test", "item_stats", "target_modules", "bits",
                                 "lr")} == {
        "domain": "video", "model": "tiny", "output_dir": "out", "format": "csv", "max_grad_norm": 0.5,
        "max_length": 256, "dp_max_examples_per_user": 3, "base_test": False, "item_stats": True,
        "target_modules": "q_proj,k_proj", "bits": 16, "lr": 0.01}
    assert seen["seed"] is None and seen["gradient_checkpointing"] is None  # not given: the YAML's or the default


def test_every_field_is_a_yaml_key(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text(dump_yaml(TrainConfig()))
    assert build_config(path) == TrainConfig()


def test_validation_follows_the_metadata():
    for name, f in FIELDS.items():
        nullable = KINDS[name][1]
        if nullable:
            assert build_config(**{name: None}) == TrainConfig()  # None = "not given"
            assert f.default is None and "flag_default" in f.metadata, f"say what {name}'s None means"
        lo, hi = f.metadata.get("range", (None, None))
        if lo is not None:
            with pytest.raises(UserError, match=f"'{name}' must be"):
                build_config(**{name: lo - 1})
        if hi is not None:
            with pytest.raises(UserError, match=f"'{name}' must be between {lo} and {hi}"):
                build_config(**{name: hi + 1})
        if "choices" in f.metadata:
            bad = 7 if KINDS[name][0] is int else "nope"
            with pytest.raises(UserError, match=f"unknown {name} '{bad}'.*; choose from "):
                build_config(**{name: bad})


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("domain: news\nmax_length: 8\n")
    with pytest.raises(UserError, match="'max_length' must be between 32 and 1000000") as err:
        build_config(path)
    assert err.value.where == f"{path}:2"
    path.write_text("seed: null\n")
    with pytest.raises(UserError, match="'seed' must not be empty"):
        build_config(path)


def test_method_settings_are_part_of_the_flat_config():
    cfg = build_config(lora_r=4, init_r=20, target_r=2, placement="pfeiffer", target_modules="q_proj")
    assert LoraSettings.of(cfg) == LoraSettings(lora_r=4, target_modules=["q_proj"])
    assert AdaLoraSettings.of(cfg) == AdaLoraSettings(init_r=20, target_r=2)
    assert AdapterSettings.of(cfg) == AdapterSettings(placement="pfeiffer")
    names = [f.name for cls in (LoraSettings, AdaLoraSettings, AdapterSettings) for f in dataclasses.fields(cls)]
    assert set(names) <= set(FIELDS) and cfg.lora_r == 4
    assert "lora_r" in TrainConfig().to_dict() and isinstance(TrainConfig(), LoraSettings)


def test_the_settings_module_needs_no_torch():
    code = "import sys, recpeft.methods.settings, recpeft.cli; assert not {'torch', 'peft'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_other_verbs_read_the_training_defaults():
    cfg = TrainConfig()
    base = {p.name: p.default for p in command("baselines").params}
    assert base["history_len"] == cfg.history_len and base["negatives"] == cfg.negatives
    assert base["seed"] == cfg.seed and base["train_samples"] == cfg.train_samples
    assert base["domain"] == cfg.domain and base["on_bad_rows"] == cfg.on_bad_rows
    assert {p.name: p.default for p in command("runs").params}["runs_dir"] == cfg.runs_dir
