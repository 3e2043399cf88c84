"""recpeft.kernels.apply: the one place patches are installed, its off switch, and the guard on transformers'
private imports (a release that moves them gives a stock model, not an ImportError)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT

import recpeft.kernels
from recpeft.evaluation.scoring import answer_logits
from recpeft.kernels import _transformers, is_enabled
from recpeft.kernels.fused import FusedLlamaAttention, FusedRMSNorm
from recpeft.kernels.last_position import LastPositionLlamaLayer, decoder_layers
from recpeft.models.load import load_base
from recpeft.tasks.batches import Encoded, collate
from recpeft.tasks.prompts import answer_token_ids


def _patch_names(model) -> set[str]:
    """The patches apply() reported, by name (the part of each line before the colon)."""
    return {line.split(":")[0] for line in model.recpeft_kernels}


def _recpeft_classes(model) -> set[type]:
    """Classes of recpeft's own on the model: only a patch puts them there."""
    return {type(m) for m in model.modules() if type(m).__module__.startswith("recpeft.")}


def _batch(tok):
    texts = ["the user liked a film about a news story", "yes no", "a b c d"]  # padded rows too
    return collate([Encoded(tok(t, add_special_tokens=False)["input_ids"], 0) for t in texts], tok.pad_token_id)


def _last_block_widths(model, batch, answers):
    """Answer logits through scoring (inside last_position), and the widths the last block returned."""
    widths = []
    handle = decoder_layers(model)[-1].register_forward_hook(lambda m, a, out: widths.append(out.shape[1]))
    try:
        with torch.no_grad():
            return answer_logits(model.eval(), batch, answers), widths
    finally:
        handle.remove()


def test_is_enabled_reads_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv("RECPEFT_KERNELS", raising=False)
    assert is_enabled() and not is_enabled(False)
    for off in ("off", "0", "false", "No "):
        monkeypatch.setenv("RECPEFT_KERNELS", off)
        assert not is_enabled() and is_enabled(True)  # the argument wins
    monkeypatch.setenv("RECPEFT_KERNELS", "on")
    assert is_enabled()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_switched_off_the_model_is_stock_and_scores_the_same(tiny_model, monkeypatch, how):
    monkeypatch.delenv("RECPEFT_KERNELS", raising=False)
    patched, tok, _ = load_base(str(tiny_model))
    if how == "environment":
        monkeypatch.setenv("RECPEFT_KERNELS", "off")
        stock, _, _ = load_base(str(tiny_model))
    else:
        stock, _, _ = load_base(str(tiny_model), kernels=False)
    assert stock.recpeft_kernels == [] and _recpeft_classes(stock) == set()
    assert _patch_names(patched) == {"fused", "last-position"}
    batch, answers = _batch(tok), answer_token_ids(tok)
    with torch.no_grad():
        full = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=batch["position_ids"]).logits for m in (patched, stock)]
    torch.testing.assert_close(full[0], full[1], atol=1e-5, rtol=0)
    (narrow, narrow_widths), (plain, plain_widths) = (_last_block_widths(m, batch, answers) for m in (patched, stock))
    assert narrow_widths == [1] and plain_widths == [batch["input_ids"].shape[1]]  # narrowing is off too
    torch.testing.assert_close(narrow, plain, atol=1e-5, rtol=0)


def test_missing_transformers_internals_give_a_stock_model_and_one_warning(tiny_model, monkeypatch, caplog):
    monkeypatch.delenv("RECPEFT_KERNELS", raising=False)
    monkeypatch.setattr(_transformers, "MISSING", "ImportError: cannot import name 'rotate_half'")
    monkeypatch.setattr(recpeft.kernels, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="recpeft.kernels"):
        for _ in range(2):
            model, tok, _ = load_base(str(tiny_model))
            assert model.recpeft_kernels == [] and _recpeft_classes(model) == set()
    assert len(caplog.records) == 1 and "rotate_half" in caplog.records[0].getMessage()  # once per process
    logits, widths = _last_block_widths(model, _batch(tok), answer_token_ids(tok))
    assert logits.shape == (3, 2) and len(widths) == 1 and widths[0] > 1  # scored, not narrowed


def test_a_transformers_release_without_the_internals_still_imports_and_loads(tiny_model):
    # A real import failure, in a fresh interpreter: the Llama model itself still loads (its module was
    # imported first), but the private module recpeft needs is gone.
    script = textwrap.dedent(f"""
        import sys
        import torch
        import transformers.models.llama.modeling_llama
        sys.modules["transformers.integrations.sdpa_attention"] = None
        import recpeft
        from recpeft.kernels import _transformers
        from recpeft.models.load import load_base
        assert not _transformers.available(), "the guard did not see the missing module"
        for _ in range(2):
            model, tok, _ = load_base({str(tiny_model)!r})
        assert model.recpeft_kernels == [], model.recpeft_kernels
        assert not any(type(m).__module__.startswith("recpeft.") for m in model.modules())
        print(tuple(model(input_ids=torch.tensor([[3, 4, 5]])).logits.shape))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RECPEFT_KERNELS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("(1, 3,")
    assert proc.stderr.count("transformers internals moved") == 1  # one line, once per process


def test_load_base_installs_nothing_but_through_apply(tiny_model, monkeypatch):
    calls = []

    def no_patches(model, *, enabled=None):
        calls.append((model, enabled))
        model.recpeft_kernels = []
        return []

    monkeypatch.setattr(recpeft.kernels, "apply", no_patches)
    for bits in (32, 8):
        model, _, _ = load_base(str(tiny_model), bits=bits)
        assert calls[-1][0] is model
        assert _recpeft_classes(model) == set(), f"a patch installed outside kernels.apply (bits {bits})"
    assert len(calls) == 2


# Each recpeft class a patch may put on a model, and the patches (apply()'s names) that put it there.
# A class missing here is a new patch: install it in kernels.apply, report it, and add it below.
PATCH_OF_CLASS = {FusedRMSNorm: {"fused"}, FusedLlamaAttention: {"fused", "last-position"},
                  LastPositionLlamaLayer: {"last-position"}}


@pytest.mark.parametrize("bits", [32, 8, 4])
@pytest.mark.parametrize("kernels", [True, False])
def test_reported_patches_match_the_classes_on_the_model(tiny_model, bits, kernels):
    from recpeft.kernels.quantised import FrozenInt8Linear, FrozenNF4Linear

    owners = {**PATCH_OF_CLASS, FrozenInt8Linear: {"quantised"}, FrozenNF4Linear: {"quantised"}}
    model, _, _ = load_base(str(tiny_model), bits=bits, kernels=kernels)
    reported, found = _patch_names(model), _recpeft_classes(model)
    assert found <= owners.keys(), f"unreported recpeft classes on the model: {found - owners.keys()}"
    for cls in found:
        assert owners[cls] & reported, f"{cls.__name__} is on the model but apply() did not report it"
    for name in reported:
        assert any(name in owners[cls] for cls in found), f"apply() reported {name!r} but installed nothing"
    # The quantised swap is not optional (see recpeft.kernels): it stays when the switch is off.
    assert reported == ({"quantised"} if bits in (4, 8) else set()) | ({"fused", "last-position"} if kernels else set())
