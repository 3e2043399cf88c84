"""recpeft behaves the same whichever branch bitsandbytes takes for this CPU (issue 14).

On CPUs with AVX512-BF16 bitsandbytes 0.50 logs a warning at import and runs 4-bit layers through a
repacked bf16 kernel (which crashed on the tiny model); without it, neither. Each test runs in a fresh
process with bitsandbytes' probe forced both ways (tests/bnb_probe.py), so CI checks both branches on
any CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import warnings

import pytest
from bnb_probe import python_forcing

BRANCHES = pytest.mark.parametrize("avx512bf16", [True, False], ids=["avx512bf16", "no-avx512bf16"])


def _run(avx512bf16: bool, code: str, cwd, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECPEFT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(python_forcing(avx512bf16, code), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@BRANCHES
@pytest.mark.parametrize("args", [["--model", "./no/such/model"], ["--data", "nowhere"]], ids=["model", "data"])
def test_a_user_error_is_one_line_on_either_branch(avx512bf16, args, tmp_path):
    code = ("from recpeft.cli.app import main\nimport bitsandbytes.functional as F\n"
            f"assert F.has_avx512bf16() is {avx512bf16!r}\n"  # the branch really is the one forced
            f"sys.argv = ['recpeft', 'train', *{args!r}]\n"
            "main()\n")
    out = _run(avx512bf16, code, tmp_path, tmp_path / "home")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("recpeft: error: "), out.stderr


FOUR_BIT_RUN = """
import json
import recpeft  # first, as every recpeft entry point: its filters are in place before bitsandbytes loads
import bitsandbytes as bnb
import torch
from recpeft.tasks.batches import collate, encode
from recpeft.config import TrainConfig
from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.methods import load_adapter
from recpeft.models.load import load_base
from recpeft.tasks.prompts import answer_token_ids
from recpeft.evaluation.scoring import answer_logits
from recpeft.tasks.examples import preference_examples
from recpeft.training.trainer import train

torch.set_num_threads(1)
model, out = sys.argv[1], sys.argv[2]
result = train(TrainConfig(domain="news", model=model, data=sys.argv[3], output_dir=out, bits=4, max_steps=6,
                           eval_every=6, batch_size=4, lr=1e-2, eval_samples=8, test_samples=8, patience=0,
                           threads=1, runs_dir=out + "-runs"), show_progress=False)
base, tok, _ = load_base(model, bits=4)
layer = next(m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit))
net = load_adapter(base, out).eval()
data, domain = load_sample("news"), get_domain("news")
examples = preference_examples(data)["test"][:4]
scores = []
with torch.no_grad():
    for rows in (examples, examples[:1]):  # one row: bitsandbytes' gemv path on the CPU
        batch = collate(encode(rows, data, domain, tok, 10, 320), tok.pad_token_id)
        scores.append(answer_logits(net, batch, answer_token_ids(tok)).tolist())
print(json.dumps({"probe": layer.support_avx512bf16_for_cpu, "layer": type(layer).__name__, "scores": scores}))
"""


@BRANCHES
def test_a_4bit_base_trains_scores_and_reloads_on_either_branch(avx512bf16, tiny_model, skewed_news, tmp_path):
    code = FOUR_BIT_RUN.replace("sys.argv[1]", repr(str(tiny_model))).replace(
        "sys.argv[2]", repr(str(tmp_path / "adapter"))).replace("sys.argv[3]", repr(str(skewed_news)))
    out = _run(avx512bf16, code, tmp_path, tmp_path / "home")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gemm_4bit_forward" not in out.stderr  # the import-time noise of the AVX512-BF16 branch
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["probe"] is avx512bf16 and r["layer"] == "FrozenNF4Linear"
    batch_of_four, alone = r["scores"]
    assert len(batch_of_four) == 4 and all(len(row) == 2 for row in batch_of_four)
    assert alone[0] == pytest.approx(batch_of_four[0], abs=1e-4)  # the same function for one row as for four
    assert all(math.isfinite(x) for row in batch_of_four for x in row)


def test_the_same_4bit_scores_on_both_branches(tiny_model, skewed_news, tmp_path):
    """A CPU feature never changes a score: the adapter trained on one branch scores the same on the other."""
    code = FOUR_BIT_RUN.replace("sys.argv[1]", repr(str(tiny_model))).replace(
        "sys.argv[2]", repr(str(tmp_path / "adapter"))).replace("sys.argv[3]", repr(str(skewed_news)))
    first = _run(True, code, tmp_path, tmp_path / "home")
    second = _run(False, code, tmp_path, tmp_path / "home")
    assert first.returncode == 0 and second.returncode == 0, (first.stderr + second.stderr)[-3000:]
    a, b = (json.loads(p.stdout.strip().splitlines()[-1])["scores"] for p in (first, second))
    flat = [x for scores in (a, b) for rows in scores for row in rows for x in row]
    assert flat[:len(flat) // 2] == pytest.approx(flat[len(flat) // 2:], abs=1e-5)


def test_only_the_known_messages_are_dropped(caplog):
    import recpeft  # noqa: F401  (installs the filters)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
        logger.warning("a real bitsandbytes problem")
        logging.getLogger("bitsandbytes.backends.cpu").error("a sibling's error")
    shown = [r.getMessage() for r in caplog.records]
    assert shown == ["a real bitsandbytes problem", "a sibling's error"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        from recpeft import quiet

        quiet.install()  # catch_warnings restores the filters on exit; install them inside
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=2)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
