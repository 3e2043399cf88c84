"""The training and scoring speed tricks are really in effect: SDPA, threads, one tokenisation, logits
at one position, checkpointing only on request; and the training benchmark runs end to end."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ROOT
from transformers import PreTrainedTokenizerBase

from recpeft import runtime
from recpeft.config import TrainConfig
from recpeft.data import load_data
from recpeft.domains import get_domain
from recpeft.evaluation.scoring import AnswerRowsHead, answer_logits, answer_rows, score
from recpeft.models.load import load_base
from recpeft.tasks.batches import encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import answer_token_ids
from recpeft.training.trainer import train


def _cfg(tmp_path, model, data, **kw):
    base = dict(domain="news", model=str(model), data=str(data), output_dir=str(tmp_path / "out"), max_steps=2,
                batch_size=4, eval_every=2, eval_samples=8, test_samples=4, patience=0, threads=1)
    return TrainConfig(**{**base, **kw})


def test_load_base_uses_sdpa_attention(tiny_model):
    model, _, _ = load_base(str(tiny_model))
    assert model.config._attn_implementation == "sdpa"


def test_default_threads_follow_cpu_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert runtime.usable_cores() == 6
    assert runtime.default_threads(1) == 6 and runtime.default_threads(4) == 1 and runtime.default_threads(12) == 1


def test_machine_description_names_the_cpu_model(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert runtime.cpu_model(str(info)) == "Intel(R) Xeon(R) Processor"
    info.write_text("processor\t: 0\nmodel name\t:\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert runtime.cpu_model(str(info)) == "Intel(R) Xeon(R) Processor"
    # One model name, two speeds: the vector extensions tell the hosts apart
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert runtime.cpu_model(str(info)) == "AMD EPYC [avx2]"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: avx2 avx512f avx512bw avx512_bf16\n")
    assert runtime.cpu_model(str(info)) == "AMD EPYC [avx2 avx512f avx512_bf16]"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # e.g. aarch64: no model name line
    monkeypatch.setattr(runtime.platform, "processor", lambda: "")
    assert runtime.cpu_model(str(info)) == runtime.platform.machine()
    assert runtime.cpu_model(str(tmp_path / "missing")) == runtime.platform.machine()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert runtime.describe_machine()["cpus"] == 2


def test_training_runs_on_the_default_thread_count(tiny_model, skewed_news, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    seen = set()
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.add(torch.get_num_threads()) if module.training else None)
    before = torch.get_num_threads()
    try:
        train(_cfg(tmp_path, tiny_model, skewed_news, threads=0), save=False, show_progress=False)
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert seen == {3}


def test_examples_are_tokenised_once_not_per_epoch(tiny_model, skewed_news, tmp_path, monkeypatch):
    calls = []
    original = PreTrainedTokenizerBase.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", counting)
    counts = []
    for epochs in (1, 3):
        calls.clear()
        result = train(_cfg(tmp_path, tiny_model, skewed_news, max_steps=0, epochs=epochs, eval_every=1000),
                       save=False, show_progress=False)
        counts.append(len(calls))
    assert result.metrics["steps"] > 3  # several passes really ran
    assert counts[0] == counts[1] > 0


def test_train_step_and_scoring_compute_logits_at_one_position(tiny_model, skewed_news, tmp_path):
    widths = []

    def hook(module, args):
        if isinstance(module, torch.nn.Linear) and module.out_features > 100:  # the LM head (vocabulary rows)
            widths.append(args[0].shape[1])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        result = train(_cfg(tmp_path, tiny_model, skewed_news), save=False, show_progress=False)
        data = load_data("news", str(skewed_news))
        rows = encode(preference_examples(data)["test"][:5], data, get_domain("news"), result.tokenizer, 6, 320)
        widths.clear()
        score(result.model, rows, answer_token_ids(result.tokenizer), result.tokenizer.pad_token_id, batch_size=2)
    finally:
        handle.remove()
    assert widths and set(widths) == {1}


def _batch(tok, texts):
    from recpeft.tasks.batches import Encoded, collate

    return collate([Encoded(tok(t, add_special_tokens=False)["input_ids"], 0) for t in texts], tok.pad_token_id)


def test_lm_head_computes_only_the_answer_rows_with_the_same_logits_and_gradients(tiny_model):
    from recpeft.methods import get_method

    model, tok, _ = load_base(str(tiny_model))
    model = get_method("lora").attach(model, TrainConfig(domain="news", lora_dropout=0.0), ["q_proj", "v_proj"], 1)
    with torch.no_grad():  # a non-zero adapter, so its gradients flow through the head's rows
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    batch = _batch(tok, ["the user liked a film", "yes no"])
    answers = answer_token_ids(tok)
    head = model.get_output_embeddings()
    widths = []
    handle = head.register_forward_hook(lambda m, a, out: widths.append(out.shape[-1]))
    try:
        narrow = answer_logits(model, batch, answers)
    finally:
        handle.remove()
    assert isinstance(head, AnswerRowsHead) and widths == [len(answers)]
    narrow.sum().backward()
    grads_narrow = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    full = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1).logits[:, -1, answers]
    assert full.shape == narrow.shape and torch.allclose(full, narrow, atol=1e-5)
    full.sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, grads_narrow[n], atol=1e-6), n


def test_the_narrowed_head_is_the_same_module_outside_answer_rows(tiny_model):
    model, tok, _ = load_base(str(tiny_model))
    keys = set(model.state_dict())
    with answer_rows(model, [5, 7]) as narrowed:
        assert narrowed
    head = model.get_output_embeddings()
    assert isinstance(head, AnswerRowsHead) and set(model.state_dict()) == keys
    assert (head.weight is model.get_input_embeddings().weight) == model.config.tie_word_embeddings
    ids = torch.tensor([[3, 4, 5]])
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size  # full head outside the context


def test_a_head_that_cannot_be_narrowed_keeps_full_logits(tiny_model):
    model, tok, _ = load_base(str(tiny_model))

    class Custom(torch.nn.Module):  # e.g. a quantised head: left alone
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    reference = answer_logits(model, _batch(tok, ["a b c"]), [5, 7])
    model.set_output_embeddings(Custom(model.get_output_embeddings()))
    with answer_rows(model, [5, 7]) as narrowed:
        assert not narrowed
    assert torch.allclose(answer_logits(model, _batch(tok, ["a b c"]), [5, 7]), reference, atol=1e-6)


@pytest.mark.parametrize("bits", [32, 8])
def test_gradient_checkpointing_only_when_asked(tiny_model, skewed_news, tmp_path, bits):
    for asked in (False, True):
        cfg = _cfg(tmp_path, tiny_model, skewed_news, bits=bits, gradient_checkpointing=asked, max_steps=1,
                   eval_every=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = train(cfg, save=False, show_progress=False).model.get_base_model()
        assert model.is_activation_checkpointing is asked
        # recpeft calls no deprecated transformers API of its own (issue 14)
        assert not [w for w in caught if "gradient_checkpointing_enable" in str(w.message)]


def test_release_memory_is_safe_to_call():
    assert isinstance(runtime.release_memory(), bool)


@pytest.mark.slow
def test_bench_train_quick_runs_on_a_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_train.py"), "--quick", "--model",
                           str(tiny_model), "--threads", "1", "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["examples"] == 8 and r["steps"] == 2 and r["threads_inside_run"] == [1]
    assert r["attn_implementation"] == "sdpa"
    assert r["machine"]["processor"] and r["machine"]["torch"] == torch.__version__
    # real tokens <= what recpeft computed (bucketed padding) < the naive loop's fixed-length padding
    assert 0 < r["real_tokens"] <= r["recpeft_tokens_incl_padding"] < r["naive_tokens_incl_padding"]
    assert r["naive"]["samples_per_s"] > 0 and r["recpeft"]["samples_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["recpeft"]["samples_per_s"] / r["naive"]["samples_per_s"], rel=0.02)
    assert 0 <= r["naive"]["valid_auc"] <= 1 and 0 <= r["recpeft"]["valid_auc"] <= 1
    assert "speed-up (b)/(a)" in proc.stdout and "FLOP rule" in proc.stdout
    # the reference is measured during (b), between its steps, and the share is against it
    low, high = r["recpeft"]["matmul_gflops_during_range"]
    assert 0 < low <= r["matmul_gflops_reference"] == r["recpeft"]["matmul_gflops_during"] <= high
    assert r["recpeft"]["share_of_matmul"] == pytest.approx(
        r["recpeft"]["useful_gflops"] / r["matmul_gflops_reference"], abs=0.01)
    # work the loss does not need is left out of the useful FLOPs: the last block beyond its k, v projections
    assert 0 < r["n_not_needed"]["last_unread"] < r["n_block"] / 2
    shares = r["recpeft_step_time_shares"]
    assert set(shares) == {"base matmuls", "adapter matmuls", "attention (SDPA)", "element-wise & other"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01) and shares["base matmuls"] > 0
