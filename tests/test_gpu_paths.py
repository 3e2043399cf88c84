"""The CUDA-only choices (recpeft.kernels.gpu), checked on the CPU: batch size from a token budget, padding to a
multiple of 8 that leaves scores unchanged, the attention switch, liger-kernel when installed, and
experiments/bench_gpu.py --smoke (every path of the GPU benchmark on a tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import torch
from conftest import ROOT

from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.evaluation.scoring import answer_logits
from recpeft.kernels import gpu
from recpeft.models.load import load_base
from recpeft.tasks.batches import collate, encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import answer_token_ids


def test_auto_batch_size_fills_the_token_budget_on_cuda_only():
    lengths = [100] * 90 + [130] * 10  # 95th percentile: 130 tokens
    assert gpu.auto_batch_size(lengths, 16384, on_cuda=False) == gpu.CPU_BATCH_SIZE
    assert gpu.auto_batch_size(lengths, 16384, on_cuda=True) == 64  # 16384 // 130 = 126 -> 64
    assert gpu.auto_batch_size(lengths, 100_000, on_cuda=True) == 128  # capped
    assert gpu.auto_batch_size([5000], 4096, on_cuda=True) == 1  # one row over budget still trains
    assert gpu.batch_size_for(12, 16384, lengths, on_cuda=True) == 12  # an explicit size wins


def test_padding_to_a_multiple_of_8_leaves_the_answer_logits_unchanged(tiny_model):
    model, tok, _ = load_base(str(tiny_model), bits=32)
    data, domain = load_sample("news"), get_domain("news")
    rows = encode(preference_examples(data)["test"][:5], data, domain, tok, 10, 320)
    plain, padded = collate(rows, tok.pad_token_id), collate(rows, tok.pad_token_id, multiple=8)
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["input_ids"].shape[1] > plain["input_ids"].shape[1] - 1
    with torch.no_grad():
        torch.testing.assert_close(answer_logits(model.eval(), padded, answer_token_ids(tok)),
                                   answer_logits(model, plain, answer_token_ids(tok)), atol=1e-5, rtol=0)


def test_configure_turns_cudnn_attention_off_and_applies_liger_when_installed(tiny_model, monkeypatch):
    model, _, _ = load_base(str(tiny_model), bits=32)
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        monkeypatch.setitem(sys.modules, "liger_kernel", None)  # not installed: nothing but the attention switch
        assert gpu.configure(model) == ["sdpa: cuDNN off (no per-shape plans)"]
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        calls = []
        fake = types.ModuleType("liger_kernel.transformers")
        fake.apply_liger_kernel_to_llama = lambda **kw: calls.append(kw)
        monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
        assert gpu.configure(model) == ["liger-kernel: RMSNorm, RoPE, SwiGLU"]
        assert calls and calls[0]["model"] is model and calls[0]["fused_linear_cross_entropy"] is False
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_bench_gpu_smoke_runs_every_path(tmp_path):
    out = tmp_path / "bench_gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_gpu.py"), "--smoke", "--output", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RECPEFT_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r = json.loads(out.read_text())
    assert r["errors"] == []
    runs = {(row["batch"], row["run"]) for row in r["runs"]}
    for batch in (2, 4, gpu.CPU_BATCH_SIZE):  # batch 0 is recpeft's default: 8 on the CPU
        for run in ("recpeft bits 16", "recpeft bits 8", "recpeft bits 4", "plain", "tallrec"):
            assert (batch, run) in runs
    assert all(row["tokens_per_s"] > 0 and 0 < row["useful_mfu"] for row in r["runs"])
    assert {row["bits"] for row in r["latency"]} == {16, 8}
    assert all(row["cached_p50_ms"] > 0 and row["naive_p50_ms"] > 0 for row in r["latency"])


def test_cuda_scores_all_candidates_of_a_request_in_one_forward():
    from recpeft.serving.prefix import length_groups, suffix_grouping

    lengths = [5, 9, 14, 30, 7] * 20  # 100 candidates of very different lengths
    slack, rows = suffix_grouping(torch.device("cuda"), 64)
    assert len(length_groups(lengths, rows, slack=slack)) == 1
    slack, rows = suffix_grouping(torch.device("cpu"), 64)
    assert len(length_groups(lengths, rows, slack=slack)) > 4  # the CPU keeps tight length groups
