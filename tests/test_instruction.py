"""Alpaca / TALLRec instruction data trained and evaluated as it is (recpeft/tasks/instruction.py)."""

import json
import math
import random

import pytest
from conftest import build_tiny_model
from test_eval import run_cli

from recpeft.config import TrainConfig
from recpeft.data import load_data
from recpeft.data.schema import Instruction, InstructionData
from recpeft.errors import UserError
from recpeft.evaluation.evaluate import evaluate
from recpeft.tasks import get_task, task_name
from recpeft.tasks.examples import instruction_splits
from recpeft.training.trainer import train

QUESTION = "Will the user enjoy the next film ? Answer Yes or No ."
GOOD, BAD = ["bright", "funny", "warm"], ["dull", "grim", "slow"]
COLOURS = {"sky": "blue", "grass": "green", "blood": "red", "snow": "white"}
WORDS = " ".join([QUESTION, *GOOD, *BAD, "User liked films :", "What colour is the", *COLOURS, *COLOURS.values()])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model with the words of these records in its vocabulary."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-instruction-llama"), extra_text=WORDS)


def yes_no_records(n: int, seed: int) -> list[dict]:
    """TALLRec-style records: 'Yes.' when the input's mood word is a good one (plus a 75% Yes prior)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        good = k % 4 != 0
        words = rng.sample(GOOD if good else BAD, 2)
        out.append({"instruction": QUESTION, "input": f"User liked films : {' '.join(words)}",
                    "output": "Yes." if good else "No."})
    return out


@pytest.fixture(scope="module")
def tallrec_folder(tmp_path_factory):
    """TALLRec's layout: train.jsonl, valid.json (a JSON array) and test.jsonl."""
    folder = tmp_path_factory.mktemp("tallrec")
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in yes_no_records(40, 0)))
    (folder / "valid.json").write_text(json.dumps(yes_no_records(8, 1), indent=1))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in yes_no_records(12, 2)))
    return folder


@pytest.fixture(scope="module")
def colours_file(tmp_path_factory):
    """Free-text answers (not Yes/No), one file with no split names: split 80/10/10."""
    path = tmp_path_factory.mktemp("colours") / "colours.jsonl"
    names = list(COLOURS) * 10
    path.write_text("".join(json.dumps({"instruction": "What colour is the", "input": thing,
                                        "output": COLOURS[thing]}) + "\n" for thing in names))
    return path


def cfg(model, data, out=None, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), output_dir=str(out) if out else None, max_steps=30, batch_size=8,
                lr=3e-2, eval_every=30, eval_samples=0, test_samples=0, patience=0, lora_dropout=0.0, threads=1)
    return TrainConfig(**{**base, **kw})


def test_yes_no_records_train_with_the_verbaliser_and_write_an_adapter(tiny, tallrec_folder, tmp_path):
    out = tmp_path / "adapters" / "movies"
    result = train(cfg(tiny, tallrec_folder, out), show_progress=False)  # the default --task preference
    m = result.metrics
    assert m["task"] == "instruction" and m["main_metric"] == "auc"
    assert (m["train_examples"], m["valid_n"], m["test_n"]) == (40, 8, 12)  # the split of each file
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.05, (first, last)
    assert 0 <= m["test_auc"] <= 1 and not math.isnan(m["valid_auc_base"])
    meta = json.loads((out / "recpeft.json").read_text())
    assert meta["task"] == "instruction" and meta["train_config"]["task"] == "instruction"
    assert meta["prompt_template"] == "instruction-v1" and meta["verbalizer"]["answers"] == ["No", "Yes"]
    assert (out / "adapter_model.safetensors").is_file()

    report = evaluate(str(out), threads=1, show_progress=False)  # everything else from recpeft.json
    assert report.payload["task"] == "instruction" and report.metrics["n"] == 12
    assert report.metrics["auc"] == pytest.approx(m["test_auc"], abs=1e-5)
    assert report.path == out.parent / "movies.eval-instruction-test.json"


def test_prompt_is_the_record_as_it_is(tiny, tallrec_folder):
    from transformers import AutoTokenizer

    from recpeft.domains import get_domain

    tok = AutoTokenizer.from_pretrained(tiny)
    data = load_data("video", str(tallrec_folder))
    task = get_task("instruction", data, get_domain("video"), tok, TrainConfig())
    record = data.split("test")[0]
    row = task.eval_set("test").rows[0]
    text = " ".join(tok.decode(row.input_ids).split())
    assert text.endswith(f"{record.instruction} {record.input} ### Response :")  # not reworded
    assert row.label == record.label


def test_free_text_records_train_with_lm_loss_and_evaluate(tiny, colours_file, tmp_path, monkeypatch, capsys):
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    out = tmp_path / "adapters" / "colours"
    result = train(cfg(tiny, colours_file, out, task="instruction", target_modules=every, lr=5e-2),
                   show_progress=False)
    m = result.metrics
    assert m["task"] == "instruction" and m["main_metric"] == "loss"
    assert (m["train_examples"], m["valid_n"], m["test_n"]) == (32, 4, 4)  # seeded 80/10/10 of 40
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.05, (first, last)
    assert m["test_loss"] < m["test_loss_base"]  # the answer tokens became likelier
    assert 0 <= m["test_exact_match"] <= 1 and result.test_outputs["expected"]
    meta = json.loads((out / "recpeft.json").read_text())
    assert meta["verbalizer"] is None and meta["task"] == "instruction"

    capsys.readouterr()  # the training run's own output
    code, stdout, stderr = run_cli("eval", "--adapter", str(out), "--json", "--threads", "1", cwd=tmp_path,
                                   monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, stderr
    payload = json.loads(stdout)
    assert payload["main_metric"] == "loss" and payload["higher_is_better"] is False
    assert payload["metrics"]["loss"] == pytest.approx(m["test_loss"], abs=1e-4)
    assert payload["metrics"]["exact_match"] == pytest.approx(m["test_exact_match"])


def test_exact_match_compares_first_lines(tiny, colours_file, monkeypatch):
    from transformers import AutoTokenizer

    from recpeft.domains import get_domain
    from recpeft.tasks import instruction

    tok = AutoTokenizer.from_pretrained(tiny)
    task = get_task("instruction", load_data("video", str(colours_file)), get_domain("video"), tok, TrainConfig())
    evalset = task.eval_set("test")
    answers = [x.output for x in evalset.examples]
    generated = [f"  {answers[0]}\nmore", "wrong", f"{answers[2]} too", answers[3]]
    monkeypatch.setattr(instruction, "generate", lambda *a, **k: generated)
    monkeypatch.setattr(instruction, "mean_answer_loss", lambda *a, **k: 1.0)
    result = task.evaluate(None, evalset)
    assert result.metrics == {"loss": 1.0, "exact_match": 0.5, "n": 4}


def records(n: int, split: str | None = None) -> list[Instruction]:
    return [Instruction(f"q{k}", "", "Yes" if k % 2 else "No", k % 2, split, f"f.json:{k + 1}") for k in range(n)]


def test_splits_from_file_names_else_seeded_80_10_10():
    plain = InstructionData("x", records(50))
    a, b = instruction_splits(plain, seed=3), instruction_splits(plain, seed=3)
    assert a == b and {k: len(v) for k, v in a.items()} == {"train": 40, "valid": 5, "test": 5}
    assert sorted(x.instruction for v in a.values() for x in v) == sorted(x.instruction for x in plain.examples)
    assert instruction_splits(plain, seed=4)["test"] != a["test"]
    named = InstructionData("y", records(20, "train") + records(3, "test"))
    s = instruction_splits(named, seed=0)  # no valid file: a seeded tenth of train validates
    assert {k: len(v) for k, v in s.items()} == {"train": 18, "valid": 2, "test": 3}
    mixed = InstructionData("z", records(4, "train") + records(2))
    with pytest.raises(UserError) as err:
        instruction_splits(mixed)
    assert err.value.where == "f.json" and "not train / valid / test" in str(err.value)


def test_tasks_and_data_must_match(tallrec_folder):
    data = load_data("video", str(tallrec_folder))
    assert task_name("preference", data) == "instruction" == task_name("instruction", data)
    with pytest.raises(UserError, match="is instruction data .alpaca.: .* not rating"):
        task_name("rating", data)
    with pytest.raises(UserError, match="--task instruction needs instruction data"):
        task_name("instruction", load_data("video", None))


def test_cli_trains_alpaca_data_and_refuses_a_task_it_cannot_do(tiny, tallrec_folder, tmp_path, monkeypatch,
                                                                capsys):
    common = ["--data", str(tallrec_folder), "--model", str(tiny), "--threads", "1"]
    code, _, stderr = run_cli("train", *common, "--task", "ranking", cwd=tmp_path, monkeypatch=monkeypatch,
                              capsys=capsys)
    assert code == 2 and "is instruction data (alpaca)" in stderr and not (tmp_path / "adapters").exists()
    code, stdout, stderr = run_cli("train", *common, "--max-steps", "4", "--eval-every", "4", "--batch-size", "8",
                                   "-o", "adapters/tallrec", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, stderr
    assert "/ instruction / lora" in stdout and (tmp_path / "adapters" / "tallrec" / "recpeft.json").is_file()


@pytest.mark.slow
def test_zero_shot_on_the_real_model(tallrec_folder, colours_file):
    """The real chat template carries the record unchanged, and both kinds of data evaluate zero-shot."""
    from recpeft.domains import get_domain
    from recpeft.models.hub import DEFAULT_MODEL, pull
    from recpeft.models.load import load_tokenizer

    tok = load_tokenizer(str(pull(DEFAULT_MODEL)))
    data = load_data("news", str(tallrec_folder))
    row = get_task("instruction", data, get_domain("news"), tok, TrainConfig()).eval_set("test").rows[0]
    record = data.split("test")[0]
    assert f"<|im_start|>user\n{record.instruction}\n\n{record.input}<|im_end|>\n<|im_start|>assistant\n" \
        in tok.decode(row.input_ids)
    yes_no = evaluate("none", data=str(tallrec_folder), limit=6, threads=2, show_progress=False, write=False)
    assert yes_no.payload["task"] == "instruction" and yes_no.metrics["n"] == 6
    assert all(0 < p < 1 for p in yes_no.outputs["scores"]) and len(set(yes_no.outputs["scores"])) == 6
    free = evaluate("none", data=str(colours_file), threads=2, show_progress=False, write=False)
    assert free.metrics["n"] == 4 and 0 < free.metrics["loss"] < 20 and all(free.outputs["generated"])
    print(free.metrics, free.outputs["generated"])
