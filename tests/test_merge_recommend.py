"""`recpeft merge` (bake and --combine) and `recpeft recommend`, through the library and the CLI."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import recpeft
from recpeft.errors import UserError
from recpeft.methods import load_adapter
from recpeft.models.load import load_base
from recpeft.serving.merge import combine_adapters, merge_adapter

IDS = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 2]])


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


@pytest.mark.parametrize("name", ["news", "video"])  # lora, adalora
def test_merge_is_lossless_and_a_plain_hf_folder(name, tiny_adapters, tiny_task_model, tmp_path):
    r = merge_adapter(tiny_adapters[name], tmp_path / "merged")
    assert r["max_abs_logit_diff"] <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    state = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not any("lora" in k for k in state)
    base, tok, _ = load_base(str(tiny_task_model), bits=32)
    base_logits = _logits(base)
    want = _logits(load_adapter(base, tiny_adapters[name], tok))
    assert (_logits(merged) - want).abs().max() <= 1e-4
    assert (want - base_logits).abs().max() > 1e-3  # the adapter really changed the model


def test_merge_refuses_bottleneck_and_foreign_folders(tiny_adapters, tmp_path):
    with pytest.raises(UserError, match="cannot merge a bottleneck Adapter"):
        merge_adapter(tiny_adapters["ecommerce"], tmp_path / "m")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing to replace"):
        merge_adapter(tiny_adapters["news"], tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="cannot combine a bottleneck"):
        combine_adapters([tiny_adapters["news"], tiny_adapters["ecommerce"]], [0.5, 0.5], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_combine_is_the_weighted_sum_of_updates(tiny_adapters, tiny_task_model, tmp_path):
    out = tmp_path / "news+video"
    combine_adapters([tiny_adapters["news"], tiny_adapters["video"]], [0.3, 0.7], out)
    assert {p.name for p in out.iterdir()} == {"adapter_model.safetensors", "adapter_config.json", "recpeft.json",
                                              "README.md"}
    meta = json.loads((out / "recpeft.json").read_text())
    assert meta["method"] == "lora" and [s["weight"] for s in meta["combination"]["sources"]] == [0.3, 0.7]
    # W + 0.3 d1 + 0.7 d2 = 0.3 (W + d1) + 0.7 (W + d2): mix the two merged models' weights
    merge_adapter(tiny_adapters["news"], tmp_path / "m1")
    merge_adapter(tiny_adapters["video"], tmp_path / "m2")
    s1, s2 = (load_file(str(tmp_path / m / "model.safetensors")) for m in ("m1", "m2"))
    mixed = AutoModelForCausalLM.from_pretrained(tmp_path / "m1")
    mixed.load_state_dict({k: 0.3 * s1[k] + 0.7 * s2[k] for k in s1}, strict=False)
    base, tok, _ = load_base(str(tiny_task_model), bits=32)
    combined = load_adapter(base, out, tok)
    assert (_logits(combined) - _logits(mixed)).abs().max() <= 1e-4
    assert recpeft.load(out).score(["a"], ["b", "c"])  # usable as any adapter


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `recpeft ...` in this process (main(): one-line errors, exit codes); returns (code, out, err)."""
    from recpeft.cli.app import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["recpeft", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def test_cli_recommend_merge_and_errors(tiny_adapters, tmp_path, cli):
    news = tiny_adapters["news"]
    hist = "Stocks fall as earnings beat; -Governor rejects immigration proposal"
    r = cli("recommend", "--adapter", news, "--history", hist, "--from-catalog", "-k", "4", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["rank"] for x in rows] == [1, 2, 3, 4] and rows[0]["score"] >= rows[-1]["score"]
    assert "Stocks fall as earnings beat" not in [x["title"] for x in rows]
    want = recpeft.load(news).rank([("Stocks fall as earnings beat", True)], ["x"], k=1)  # API is importable
    assert want
    cands = tmp_path / "cands.txt"
    cands.write_text("Markets rally\nBand cancels tour\n")
    r = cli("recommend", "--adapter", news, "--history", hist, "--candidates", cands, "-k", "5")
    assert r.returncode == 0 and "rank" in r.stdout and "Band cancels tour" in r.stdout
    cands.write_text("\n")
    r = cli("recommend", "--adapter", news, "--history", hist, "--candidates", cands)
    assert r.returncode == 2 and "candidate list is empty" in r.stderr and "Traceback" not in r.stderr
    r = cli("recommend", "--adapter", tmp_path / "nope", "--history", hist, "--from-catalog")
    assert r.returncode == 2 and "adapter folder not found" in r.stderr
    r = cli("merge", "--combine", news, tiny_adapters["news2"], "--weights", "0.5", "0.5", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "0.5 x" in r.stdout and (tmp_path / "c" / "recpeft.json").is_file()
    r = cli("merge", tiny_adapters["video"], "--out", tmp_path / "m")
    assert r.returncode == 0 and "max |logit diff|" in r.stdout, r.stderr
    r = cli("merge", tiny_adapters["ecommerce"], "--out", tmp_path / "m2")
    assert r.returncode == 2 and "bottleneck" in r.stderr and not (tmp_path / "m2").exists()
