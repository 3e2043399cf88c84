"""Differential privacy (recpeft/training/privacy.py): per-example clipping, noise on every update, the ε that
opacus' accountant gives, clean refusals and a SIGKILLed DP run resumed to the same adapter and ε. User-level DP
is in tests/test_privacy_users.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from dp_runs import adapter, settings
from torch import nn

from recpeft.config import build_config
from recpeft.errors import UserError
from recpeft.training import privacy
from recpeft.training.trainer import train

# ------------------------------------------------------------------------------ clipping


def test_per_example_gradients_are_clipped_as_computed_by_hand():
    """Two examples, loss = mean of w·x: example gradients x1 = (3, 4) (norm 5) and x2 = (0.3, 0.4) (norm
    0.5). Clipped to C = 1: (0.6, 0.8) and (0.3, 0.4); noise 0; divided by the expected batch (2):
    (0.45, 0.6). SGD at lr 1 from w = 0 lands on -(0.45, 0.6). A frozen layer in front gets no hooks."""
    from opacus import PrivacyEngine

    frozen = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        frozen.weight.copy_(torch.eye(2))
    frozen.weight.requires_grad_(False)
    head = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(head.weight)
    model = nn.Sequential(frozen, head)
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    loader = torch.utils.data.DataLoader(list(range(2)), batch_size=2)  # its length sets q = 1
    engine = PrivacyEngine(accountant=privacy.ACCOUNTANT)
    optimizer = privacy.make_private(engine, model, optimizer, loader, noise_multiplier=0.0, max_grad_norm=1.0,
                                     expected_batch_size=2)
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    model(x).mean().backward()
    torch.testing.assert_close(head.weight.grad_sample, x[:, None, :])  # each example's own gradient
    assert not hasattr(frozen.weight, "grad_sample")
    optimizer.step()
    torch.testing.assert_close(head.weight.detach(), -torch.tensor([[0.45, 0.6]]), atol=1e-6, rtol=0)
    assert engine.accountant.history == [(0.0, 1.0, 1)]


def test_per_example_gradients_of_a_padded_batch_are_each_examples_own(tiny_model, small_news):
    """On the real path (left padding, last-position block, LoRA): opacus' per-example gradient of row i
    equals the gradient of row i trained alone, so clipping bounds exactly one example's influence."""
    from opacus import PrivacyEngine

    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.methods import get_method
    from recpeft.models.load import default_targets, load_base
    from recpeft.tasks import get_task
    from recpeft.tasks.batches import collate

    cfg = build_config(model=str(tiny_model), data=str(small_news), domain="news", lora_dropout=0.0)
    model, tok, _ = load_base(cfg.model, bits=32)
    task = get_task("preference", load_data("news", cfg.data), get_domain("news"), tok, cfg)
    rows = sorted(task.train_rows(0), key=lambda r: len(r.input_ids))
    rows = [rows[0], rows[len(rows) // 2], rows[-1]]  # three lengths: two rows are padded
    assert len({len(r.input_ids) for r in rows}) == 3
    model = get_method("lora").attach(model, cfg, default_targets(model), 10)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B = 0 would leave A without gradient
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(trainable.values(), lr=0.0)
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=3)
    privacy.make_private(PrivacyEngine(), model, optimizer, loader, 1.0, 1.0, 3)
    task.loss(model, collate(rows, tok.pad_token_id)).backward()
    per_example = {n: p.grad_sample.clone() for n, p in trainable.items()}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and hasattr(p, "grad_sample")]
    assert frozen == []
    for i, row in enumerate(rows):
        for p in trainable.values():
            p.grad_sample = None
            p.grad = None
        task.loss(model, collate([row], tok.pad_token_id)).backward()
        for n, p in trainable.items():
            torch.testing.assert_close(per_example[n][i], p.grad, atol=1e-5, rtol=1e-4, msg=n)


# ------------------------------------------------------------------------------ noise and ε


def record_updates(monkeypatch) -> list[tuple[float, float, float]]:
    """Wrap AdamW.step: for every update, (std of the gradient the optimiser receives minus the clipped,
    noiseless per-example sum / expected batch, expected batch, norm of that sum). Fails if a step
    bypasses opacus."""
    seen: list[tuple[float, float, float]] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p for g in self.param_groups for p in g["params"]]
        assert all(getattr(p, "summed_grad", None) is not None for p in grads), "an update bypassed opacus"
        batch = self._dp_expected_batch
        residual = torch.cat([(p.grad - p.summed_grad / batch).flatten() for p in grads])
        summed = torch.cat([p.summed_grad.flatten() for p in grads])
        seen.append((float(residual.std()), batch, float(summed.norm())))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    real = privacy.make_private

    def make_private(engine, model, optimizer, *args):
        dp_optimizer = real(engine, model, optimizer, *args)
        optimizer._dp_expected_batch = dp_optimizer.expected_batch_size
        return dp_optimizer

    monkeypatch.setattr(privacy, "make_private", make_private)
    return seen


def test_every_update_carries_the_accountants_noise(tiny_model, small_news, tmp_path, monkeypatch):
    from opacus.accountants.utils import get_noise_multiplier

    sigma = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=0.1, steps=6, accountant="rdp")
    seen = record_updates(monkeypatch)
    result = train(build_config(**settings(tiny_model, small_news, tmp_path, max_steps=6, checkpoint_every=0)),
                   show_progress=False)
    assert result.metrics["privacy"]["noise_multiplier"] == sigma > 0.5
    assert len(seen) == 6 == result.metrics["privacy"]["steps"]
    for std, batch, _ in seen:  # ~1,800 noise coordinates a step: the sample std is within a few % of sigma*C/B
        assert batch == pytest.approx(40 / 10)
        assert std == pytest.approx(sigma * 1.0 / batch, rel=0.15)


def test_an_empty_poisson_batch_still_takes_a_noisy_step(tiny_model, small_news, tmp_path, monkeypatch):
    """Batches of 1 on average from 40 examples: about a third are empty. Such a step runs a stand-in row
    whose gradient must be exactly zero, and still adds the noise (skipping it would reveal the empty batch)."""
    sizes = []
    real = privacy.collate_or_stand_in
    monkeypatch.setattr(privacy, "collate_or_stand_in",  # rows: the batch's examples and the end-of-batch mark
                        lambda rows, *a: sizes.append(sum(r is not None for r in rows)) or real(rows, *a))
    seen = record_updates(monkeypatch)
    result = train(build_config(**settings(tiny_model, small_news, tmp_path, batch_size=1, max_steps=8,
                                           checkpoint_every=0)), show_progress=False)
    sigma = result.metrics["privacy"]["noise_multiplier"]
    empty = [i for i, n in enumerate(sizes[:8]) if n == 0]
    assert empty and len(empty) < 8
    for i, (std, batch, summed) in enumerate(seen):
        assert std == pytest.approx(sigma / batch, rel=0.15)
        assert (summed == 0) == (i in empty)


def test_poisson_batches_split_into_pieces_that_mark_the_end_of_each_batch():
    whole, split = privacy.PoissonBatches(40, 4, seed=3), privacy.PoissonBatches(40, 4, seed=3, physical=3)
    batches, pieces = list(whole), list(split)
    assert all(b[-1] == privacy.LAST and privacy.LAST not in b[:-1] for b in batches)  # unsplit: one piece each
    assert len(pieces) > len(batches) == len(split) == 4 and all(len(p) <= 3 + 1 for p in pieces)
    regrouped, current = [], []
    for piece in pieces:
        current += piece
        if piece and piece[-1] == privacy.LAST:
            regrouped.append(current)
            current = []
    assert regrouped == batches and not current  # the same examples, in order, the mark closing each batch
    sizes, current = [], []
    for piece in pieces:
        current.append(len([i for i in piece if i != privacy.LAST]))
        if piece and piece[-1] == privacy.LAST:
            sizes.append(current)
            current = []
    assert all(max(s) - min(s) <= 1 and max(s) <= 3 for s in sizes)  # near-equal pieces, as opacus splits
    assert privacy.PoissonBatches(40, 4, seed=3, physical=3).__iter__().__next__() == pieces[0]  # replayable
    lengths = [(i * 7) % 11 for i in range(40)]  # with the rows' lengths: each batch cut in order of length
    by_length = list(privacy.PoissonBatches(40, 4, seed=3, physical=3, lengths=lengths))
    flat = [i for p in by_length for i in p if i != privacy.LAST]
    assert sorted(flat) == sorted(i for b in batches for i in b if i != privacy.LAST)
    start = 0
    for b in batches:
        chunk = flat[start:start + len(b) - 1]
        assert [lengths[i] for i in chunk] == sorted(lengths[i] for i in chunk)
        start += len(b) - 1


def test_a_batch_run_in_pieces_takes_the_same_noisy_steps(tiny_model, small_news, tmp_path, monkeypatch):
    """--dp-max-physical-batch: the pieces' clipped per-example gradients add up to one step with the whole
    batch's noise, so the run counts the same steps, spends the same ε and ends at the same adapter as the
    run that takes each batch in one pass (dropout off: its masks would differ between the two)."""
    runs, seen = {}, record_updates(monkeypatch)
    for physical in (0, 2):
        work, before = tmp_path / f"physical-{physical}", len(seen)
        result = train(build_config(**settings(tiny_model, small_news, work, max_steps=6, checkpoint_every=0,
                                               lora_dropout=0.0, dp_max_physical_batch=physical)),
                       show_progress=False)
        runs[physical] = (result, seen[before:], adapter(work / "out"))
    (whole, whole_seen, whole_weights), (split, split_seen, split_weights) = runs[0], runs[2]
    assert len(whole.losses) == 6 < len(split.losses)  # more forward passes, no more steps
    assert len(split_seen) == len(whole_seen) == 6 == split.metrics["privacy"]["steps"]
    assert split.metrics["privacy"]["epsilon_spent"] == whole.metrics["privacy"]["epsilon_spent"]
    assert split.metrics["privacy"]["max_physical_batch"] == 2
    for (std, batch, summed), (std0, batch0, summed0) in zip(split_seen, whole_seen):
        assert batch == batch0 and summed == pytest.approx(summed0, rel=1e-4, abs=1e-6)
        assert std == pytest.approx(std0, rel=1e-3)
    for name in whole_weights:
        torch.testing.assert_close(split_weights[name], whole_weights[name], atol=1e-5, rtol=0, msg=name)


def test_the_noise_check_catches_a_run_without_noise(tiny_model, small_news, tmp_path, monkeypatch):
    """The check above, on a run whose noise multiplier is forced to 0: it sees no noise at all."""
    import opacus.accountants.utils

    monkeypatch.setattr(opacus.accountants.utils, "get_noise_multiplier", lambda **kw: 0.0)
    seen = record_updates(monkeypatch)
    train(build_config(**settings(tiny_model, small_news, tmp_path, max_steps=2, checkpoint_every=0)),
          show_progress=False)
    assert len(seen) == 2 and all(std < 1e-6 for std, _, _ in seen)


def test_reported_epsilon_is_opacus_accountant_for_the_same_schedule(tiny_model, small_news, tmp_path):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    result = train(build_config(**settings(tiny_model, small_news, tmp_path, checkpoint_every=0,
                                           log_with="tensorboard")), show_progress=False)
    meta = json.loads((tmp_path / "out" / "recpeft.json").read_text())
    rec = meta["privacy"]
    assert rec == result.metrics["privacy"]
    assert meta["history"] and all("loss" not in h for h in meta["history"])  # no un-noised training loss
    assert "loss" in result.history[-1]  # the run itself still has it (its logs are not private)
    q, steps, delta = 1 / 10, 14, 1e-5  # 40 examples, batch 4: q = 1/10; N = 40 so delta = min(1e-5, 1/400)
    assert (rec["sample_rate"], rec["steps"], rec["delta"], rec["training_examples"]) == (q, steps, delta, 40)
    assert rec["noise_multiplier"] == get_noise_multiplier(target_epsilon=4.0, target_delta=delta, sample_rate=q,
                                                           steps=steps, accountant="rdp")
    accountant = RDPAccountant()
    accountant.history = [(rec["noise_multiplier"], q, steps)]
    assert rec["epsilon_spent"] == pytest.approx(accountant.get_epsilon(delta), abs=1e-6)
    assert 3.9 < rec["epsilon_spent"] <= 4.0
    assert (rec["unit"], rec["user_level"], rec["accountant"], rec["max_grad_norm"]) == ("example", False, "rdp", 1.0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Differential privacy" in card and "Not user-level" in card and f"{rec['epsilon_spent']:.3g}" in card


@pytest.mark.parametrize("method,bits", [("adapter", 32), ("lora", 8)])
def test_the_bottleneck_adapter_and_an_8_bit_base_train_privately(method, bits, tiny_model, small_news, tmp_path):
    result = train(build_config(**settings(tiny_model, small_news, tmp_path, method=method, bits=bits, max_steps=2,
                                           checkpoint_every=0, reduction_factor=4)), show_progress=False)
    assert result.metrics["privacy"]["steps"] == 2 and result.metrics["bits"] == bits


def test_lora_with_a_frozen_trains_privately_only_b_and_keeps_a_at_its_start(tiny_model, small_news, tmp_path):
    runs = {}
    for freeze in (False, True):
        work = tmp_path / str(freeze)
        result = train(build_config(**settings(tiny_model, small_news, work, max_steps=3, checkpoint_every=0,
                                               lora_freeze_a=freeze)), show_progress=False)
        assert result.metrics["privacy"]["steps"] == 3
        runs[freeze] = (json.loads((work / "out" / "recpeft.json").read_text())["trainable_parameters"],
                        adapter(work / "out"))
    (all_n, plain), (b_n, frozen) = runs[False], runs[True]
    assert b_n < all_n  # only B is trained (its gradients clipped and noised by opacus)
    # the same seed starts both at the same A: without the freeze DP's noise moves it, with it A stays put
    for name, tensor in frozen.items():
        if "lora_A" in name:
            assert not torch.equal(tensor, plain[name]), name
        else:
            assert "lora_B" in name and torch.count_nonzero(tensor) > 0, name  # B moved from its zero start
    train(build_config(**settings(tiny_model, small_news, tmp_path / "start", max_steps=1, checkpoint_every=0,
                                  lora_freeze_a=True, lr=0.0)), show_progress=False)
    a_start = {k: v for k, v in adapter(tmp_path / "start" / "out").items() if "lora_A" in k}
    assert a_start and all(torch.equal(frozen[k], v) for k, v in a_start.items())


def test_combining_private_adapters_sums_epsilon_and_refuses_a_non_private_one(tiny_model, small_news, tmp_path):
    from recpeft.serving.merge import combine_adapters

    spent = {}
    for name, eps in (("a", 2.0), ("b", 3.0), ("plain", None)):
        values = settings(tiny_model, small_news, tmp_path, output_dir=str(tmp_path / name), max_steps=2,
                          checkpoint_every=0, dp_epsilon=eps)
        spent[name] = train(build_config(**values), show_progress=False).metrics.get("privacy")
    assert spent["plain"] is None
    result = combine_adapters([tmp_path / "a", tmp_path / "b"], [0.5, 0.5], tmp_path / "mix")
    rec = json.loads((tmp_path / "mix" / "recpeft.json").read_text())["privacy"]
    assert rec == result["privacy"]
    assert rec["epsilon"] == pytest.approx(spent["a"]["epsilon_spent"] + spent["b"]["epsilon_spent"])
    assert rec["delta"] == pytest.approx(2e-5) and rec["unit"] == "example"
    assert "basic composition" in (tmp_path / "mix" / "README.md").read_text()
    with pytest.raises(UserError, match="cannot combine differentially private adapters with .*plain"):
        combine_adapters([tmp_path / "a", tmp_path / "plain"], [0.5, 0.5], tmp_path / "mix2")
    assert not (tmp_path / "mix2").exists()


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("extra,message", [
    ({"dp_epsilon": 0}, "'dp_epsilon' must be a finite number > 0"),
    ({"dp_epsilon": -1.0}, "'dp_epsilon' must be a finite number > 0"),
    ({"dp_epsilon": float("inf")}, "'dp_epsilon' must be a finite number > 0"),
    ({"dp_delta": 1.0}, "'dp_delta' must be between 0 and 1"),
    ({"dp_max_grad_norm": 0.0}, "'dp_max_grad_norm' .* must be a finite number > 0"),
    ({"dp_epsilon": None, "dp_delta": 1e-6}, "'dp_delta' needs 'dp_epsilon'"),
    ({"dp_epsilon": None, "dp_max_grad_norm": 2.0}, "'dp_max_grad_norm' needs 'dp_epsilon'"),
    ({"method": "adalora"}, "--dp-epsilon trains --method lora or adapter, not adalora"),
    ({"task": "ranking"}, "supports the preference, click, rating, choice tasks"),
    ({"item_stats": True}, "--item-stats writes every training example's label"),
    ({"num_processes": 2}, r"one process \(--num-processes 1\)"),
    ({"grad_accum": 2}, "use a larger --batch-size instead of --grad-accum"),
    ({"gradient_checkpointing": True}, "--gradient-checkpointing"),
    ({"dp_epsilon": None, "dp_max_examples_per_user": 3}, "'dp_max_examples_per_user' needs 'dp_epsilon'"),
    ({"dp_max_examples_per_user": -1}, "'dp_max_examples_per_user' must be between 0 and"),
    ({"dp_max_examples_per_user": 2.5}, "'dp_max_examples_per_user' must be an integer"),
])
def test_bad_values_and_unsupported_combinations_are_user_errors(extra, message):
    with pytest.raises(UserError, match=message):
        build_config(**{"dp_epsilon": 1.0, **extra})


def test_a_whole_default_config_is_no_dp_setting_given_alone():
    from recpeft.config import TrainConfig

    assert build_config(**TrainConfig().to_dict()).dp_epsilon is None  # as `recpeft eval` passes a config on


def test_delta_of_one_over_n_fails_before_the_model_loads(tiny_model, small_news, tmp_path, monkeypatch):
    import recpeft.training.trainer

    monkeypatch.setattr(recpeft.training.trainer, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match=r"'dp_delta' 0.025 must be below 1/N = 0.025 \(N = 40 training examples\)"):
        train(build_config(**settings(tiny_model, small_news, tmp_path, dp_delta=1 / 40)), show_progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_the_cli_refuses_adalora_with_dp_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "recpeft", "train", "--method", "adalora", "--dp-epsilon", "3",
                          "-o", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "recpeft: error: --dp-epsilon trains --method lora or adapter, not adalora: AdaLoRA re-allocates its rank "
        "budget from whole-batch gradients and adds a batch-level orthogonality loss, which per-example clipping "
        "does not bound"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("physical", [0, 2])  # 2: batches in pieces, so a resume skips pieces, not batches
def test_sigkilled_dp_run_resumes_to_the_same_adapter_and_epsilon(physical, tiny_model, small_news, tmp_path):
    ref_dir, work = tmp_path / "ref", tmp_path / "killed"
    extra = {"dp_max_physical_batch": physical} if physical else {}
    reference = train(build_config(**settings(tiny_model, small_news, ref_dir, **extra)), show_progress=False)
    values = settings(tiny_model, small_news, work, **extra)
    args = [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))
            if k != "base_test"] + ["--no-base-test"]
    work.mkdir()
    from _hooks import command  # the CLI with a SIGKILL after step 11 (tests/_hooks.py)

    killed = subprocess.run(command("train", *args, kill_at="step:11"), cwd=work, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "RECPEFT_HOME": str(work / "home")})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run,) = (work / "runs" / "news").iterdir()
    state = json.loads((run / "checkpoint-9" / "state.json").read_text())
    assert state["privacy"]["history"] == [[reference.metrics["privacy"]["noise_multiplier"], 0.1, 9]]
    resumed = train(build_config(**values, resume="latest"), show_progress=False)
    assert resumed.metrics["privacy"] == reference.metrics["privacy"]
    assert resumed.losses == reference.losses
    ref, got = adapter(ref_dir / "out"), adapter(work / "out")
    assert set(ref) == set(got)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=0, msg=name)


def test_a_dp_run_keeps_its_last_iterate_and_never_stops_early(tiny_model, small_news, tmp_path):
    """The accountant covers the last iterate; choosing a step by validation (or stopping on it) would not be."""
    result = train(build_config(**settings(tiny_model, small_news, tmp_path, max_steps=8, eval_every=1, patience=1,
                                           checkpoint_every=0)), show_progress=False)
    m = result.metrics
    assert m["steps"] == 8 and not m["early_stopped"]
    assert m["best_step"] == 8
    scores = [h[f"valid_{m['main_metric']}"] for h in result.history[1:]]  # after step 0 (the untrained base)
    assert len(scores) == 8 and any(b <= a for a, b in zip(scores, scores[1:]))  # a best-by-validation pick differs
