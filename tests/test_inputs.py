"""Malformed inputs across configs, flags, the CSV loader, checkpoints and adapter folders.

Each case runs the real entry point (recpeft.cli.app.main, in-process for speed; one also as a subprocess)
and must end with exit code 2, exactly one line on stderr naming the file:line where there is one, no
traceback (any other exception fails the test) and nothing written anywhere under the working folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recpeft.cli.app import main

GOOD_ITEMS = "item_id,title,category\nn1,Rain falls on the city,weather\nn2,Markets rise again,business\n"
GOOD_INTER = "user_id,item_id,timestamp,rating\nu1,n1,100,5\nu1,n2,200,2\n"


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory):
    """A real run's checkpoint and adapter (2 steps), and a second tiny base model with 3 layers."""
    from conftest import build_tiny_model

    from recpeft.config import build_config
    from recpeft.training.trainer import train

    work = tmp_path_factory.mktemp("made")
    train(build_config(model=str(tiny_model), **RUN, runs_dir=str(work / "runs"), output_dir=str(work / "out")),
          show_progress=False)
    return {"runs": work / "runs", "adapter": work / "out", "other": build_tiny_model(work / "other", layers=3)}


RUN = {"max_steps": 2, "batch_size": 4, "eval_every": 2, "eval_samples": 8, "test_samples": 8, "threads": 1,
       "checkpoint_every": 1}


def run_flags(tiny_model) -> list[str]:
    return ["--model", str(tiny_model), *[a for k, v in RUN.items() for a in (f"--{k.replace('_', '-')}", str(v))]]


def data_dir(work: Path, items: str | bytes = GOOD_ITEMS, inter: str | bytes | None = GOOD_INTER) -> list[str]:
    folder = work / "data"
    folder.mkdir()
    for name, text in (("items.csv", items), ("interactions.csv", inter)):
        if text is not None:
            (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["--data", "data"]


def yaml_file(work: Path, text: str | bytes, name: str = "cfg.yaml") -> list[str]:
    (work / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["--config", name]


def checkpoint(work: Path, made, tiny_model, damage=None) -> list[str]:
    shutil.copytree(made["runs"], work / "runs")
    (ckpt,) = [c for c in (work / "runs").rglob("checkpoint-2")]
    if damage:
        damage(ckpt)
    return ["train", *run_flags(tiny_model), "--runs-dir", "runs", "--resume", str(ckpt.relative_to(work))]


def adapter(work: Path, made, damage=None) -> Path:
    shutil.copytree(made["adapter"], work / "ad")
    if damage:
        damage(work / "ad")
    return work / "ad"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


# name -> builder(work, made, tiny_model) -> (argv after `recpeft`, [substrings the line must contain])
CASES = {
    "malformed YAML": lambda w, m, t: (["train", *yaml_file(w, "domain: news\nlr: [0.1\n")],
                                       ["cfg.yaml:3", "malformed YAML"]),
    "unknown config key": lambda w, m, t: (["train", *yaml_file(w, "domain: news\nlora_rr: 8\n")],
                                           ["cfg.yaml:2", "did you mean 'lora_r'"]),
    "wrong type in config": lambda w, m, t: (["train", *yaml_file(w, "domain: news\nbatch_size: eight\n")],
                                             ["cfg.yaml:2", "'batch_size' must be an integer"]),
    "config not a mapping": lambda w, m, t: (["train", *yaml_file(w, "- lr\n- 0.1\n")], ["cfg.yaml:1", "mapping"]),
    "config in the wrong encoding": lambda w, m, t: (["train", *yaml_file(w, b"domain: n\xe9ws\n")],
                                                     ["cfg.yaml", "cannot read config file"]),
    "out-of-range flag": lambda w, m, t: (["train", "--lora-dropout", "1.5"], ["'lora_dropout' must be between"]),
    "non-integer flag": lambda w, m, t: (["train", "--max-steps", "ten"], ["Invalid value for '--max-steps'"]),
    "unknown flag": lambda w, m, t: (["train", "--learning-rate", "0.1"], ["No such option: --learning-rate"]),
    "zero checkpoints kept": lambda w, m, t: (["train", "--keep-checkpoints", "0"], ["'keep_checkpoints' must be"]),
    "missing data file": lambda w, m, t: (["train", "--format", "csv", *data_dir(w, inter=None)],
                                          ["data/interactions.csv", "not found"]),
    "data format not recognisable": lambda w, m, t: (["train", *data_dir(w, inter=None)],
                                                     ["data: cannot tell the data format"]),
    "CSV row missing a field": lambda w, m, t: (["train", *data_dir(w, GOOD_ITEMS + "n3\n")],
                                                ["data/items.csv:4", "expected 3 columns"]),
    "non-numeric rating": lambda w, m, t: (["train", *data_dir(w, inter=GOOD_INTER + "u1,n1,300,five\n")],
                                           ["data/interactions.csv:4", "rating must be a number"]),
    "rating out of range": lambda w, m, t: (["train", *data_dir(w, inter=GOOD_INTER + "u2,n1,300,7\n")],
                                            ["data/interactions.csv:4", "outside 1-5"]),
    "unknown item in interactions": lambda w, m, t: (["train", *data_dir(w, inter=GOOD_INTER + "u2,zz9,5,4\n")],
                                                     ["data/interactions.csv:4", "unknown item_id 'zz9'"]),
    "empty file": lambda w, m, t: (["train", *data_dir(w, inter="")], ["data/interactions.csv:1", "file is empty"]),
    "CSV in the wrong encoding": lambda w, m, t: (["train", *data_dir(w, GOOD_ITEMS.encode() + b"n3,Caf\xe9 news,x\n")],
                                                  ["data/items.csv:4", "not valid UTF-8"]),
    "bad --resume path": lambda w, m, t: (["train", "--resume", "no/such/checkpoint"],
                                          ["no/such/checkpoint", "checkpoint not found"]),
    "nothing to resume": lambda w, m, t: (["train", "--resume", "latest"], ["runs/news", "no checkpoint to resume"]),
    "corrupt checkpoint state": lambda w, m, t: (
        checkpoint(w, m, t, lambda c: (c / "state.json").write_text('{"format_version": 1,\n "step": \n')),
        ["state.json:3", "corrupt checkpoint file"]),
    "corrupt checkpoint weights": lambda w, m, t: (
        checkpoint(w, m, t, lambda c: truncate(c / "weights.safetensors")),
        ["weights.safetensors", "corrupt checkpoint file"]),
    "checkpoint with a file missing": lambda w, m, t: (
        checkpoint(w, m, t, lambda c: (c / "optimizer.safetensors").unlink()),
        ["checkpoint-2", "optimizer.safetensors missing"]),
    "checkpoint from other settings": lambda w, m, t: (checkpoint(w, m, t) + ["--lr", "0.5"],
                                                       ["checkpoint-2", "lr 0.001 there, 0.5 now"]),
    "unwritable runs folder": lambda w, m, t: ((w / "a_file").write_text("x") and
                                               ["train", "--runs-dir", "a_file/runs"],
                                               ["a_file/runs", "runs folder is not writable"]),
    "adapter with a file missing": lambda w, m, t: (
        ["verify", str(adapter(w, m, lambda a: (a / "adapter_model.safetensors").unlink()))],
        ["incomplete adapter folder", "adapter_model.safetensors missing"]),
    "adapter with corrupt weights": lambda w, m, t: (
        ["verify", str(adapter(w, m, lambda a: truncate(a / "adapter_model.safetensors")))],
        ["adapter_model.safetensors", "corrupt safetensors file"]),
    "adapter with malformed recpeft.json": lambda w, m, t: (
        ["verify", str(adapter(w, m, lambda a: (a / "recpeft.json").write_text("{\n\n  oops")))],
        ["recpeft.json:3", "malformed JSON"]),
    "adapter for a different base model": lambda w, m, t: (["verify", str(adapter(w, m)), "--model", str(m["other"])],
                                                           ["trained on base model", "the loaded base is"]),
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_is_one_clean_line(case, made, tiny_model, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv, expected = CASES[case](work, made, tiny_model)
    before = snapshot(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("RECPEFT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["recpeft", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("recpeft: error: ") and "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(work) == before  # nothing written, nothing touched
    assert not (tmp_path / "home").exists()


def test_a_real_process_also_prints_one_line(made, tmp_path):
    """The case that loads two models, as a subprocess: no progress bars or warnings on stderr."""
    ad = adapter(tmp_path, made)
    out = subprocess.run([sys.executable, "-m", "recpeft", "verify", str(ad), "--model", str(made["other"])],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RECPEFT_HOME": str(tmp_path / "home")})
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "trained on base model" in lines[0], out.stderr


def test_verify_accepts_a_good_adapter(made, tiny_model, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["recpeft", "verify", str(made["adapter"]), "--model", str(tiny_model)])
    main()
    assert capsys.readouterr().out.startswith("ok: lora adapter for news")


def test_latest_passes_over_a_damaged_checkpoint(made, tiny_model, tmp_path, monkeypatch):
    """--resume latest takes the newest checkpoint that can be read; an explicit path is strict (above)."""
    from recpeft.config import build_config
    from recpeft.training import checkpoint as ckpts

    argv = checkpoint(tmp_path, made, tiny_model, lambda c: (c / "state.json").write_text("{"))
    monkeypatch.chdir(tmp_path)
    cfg = build_config(model=str(tiny_model), **RUN, runs_dir="runs", resume="latest")
    assert ckpts.resolve_resume(cfg).name == "checkpoint-1" and "--resume" in argv


def test_nothing_is_ever_unpickled(tiny_model, tmp_path, monkeypatch):
    """Train, checkpoint, resume and reload an adapter with torch.load and pickle booby-trapped."""
    import pickle

    import torch

    from recpeft import load_adapter
    from recpeft.config import build_config
    from recpeft.models.load import load_base
    from recpeft.training.trainer import train

    def trap(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, trap)
    values = dict(model=str(tiny_model), **RUN, runs_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "out"))
    train(build_config(**values), show_progress=False)
    train(build_config(**values, resume="latest"), show_progress=False)
    base, tok, _ = load_base(str(tiny_model))
    load_adapter(base, tmp_path / "out", tokenizer=tok)


def test_a_model_with_pickled_weights_only_is_refused(made, tiny_model, tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "binmodel"
    shutil.copytree(tiny_model, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")  # our own file
    (folder / "model.safetensors").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["recpeft", "verify", str(made["adapter"]), "--model", str(folder)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "cannot load model" in err, err
