"""The 8-bit base on the CPU: bitsandbytes' training-path forward and input gradient, in training and
inference alike, without keeping each layer's input alive for a weight gradient a frozen base never
needs."""

import gc
import weakref

import bitsandbytes as bnb
import torch

from recpeft.kernels.quantised import FrozenInt8Linear, use_frozen
from recpeft.models.load import load_base


def _int8_layer(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    dense = torch.nn.Linear(32, 24)
    layer = bnb.nn.Linear8bitLt(32, 24, has_fp16_weights=False)
    layer.load_state_dict(dense.state_dict())
    layer = layer.to("cpu")  # quantises the weight
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    return layer.train()


def test_same_output_and_input_gradient_as_bitsandbytes():
    ours, theirs = _int8_layer(), _int8_layer()
    assert use_frozen(ours) == 1 and isinstance(ours, bnb.nn.Linear8bitLt)
    x = torch.randn(3, 5, 32)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)


def test_the_input_is_not_kept_for_the_backward_pass():
    def input_alive_after_forward(layer) -> bool:
        x = torch.randn(4, 32, requires_grad=True)
        h = x * 2.0  # an activation: only the layer could keep it
        alive = weakref.ref(h)
        y = layer(h)
        del h
        gc.collect()
        result = alive() is not None
        y.sum().backward()
        return result

    assert input_alive_after_forward(_int8_layer())  # bitsandbytes' CPU training path keeps it
    layer = _int8_layer()
    use_frozen(layer)
    assert not input_alive_after_forward(layer)


def test_inference_is_the_function_training_used():
    """bitsandbytes' CPU inference path quantises activations too; ours is the training forward."""
    ours, theirs = _int8_layer(), _int8_layer()
    use_frozen(ours)
    x = torch.randn(6, 32)
    trained_through = theirs(x)  # bitsandbytes in training mode: dequantise + linear
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), trained_through)


def test_trainable_fp16_weights_stay_on_bitsandbytes_path(monkeypatch):
    frozen, trainable = _int8_layer(), bnb.nn.Linear8bitLt(32, 24, has_fp16_weights=True).to("cpu")
    use_frozen(frozen)
    use_frozen(trainable)
    calls = []
    original = bnb.nn.Linear8bitLt.forward
    monkeypatch.setattr(bnb.nn.Linear8bitLt, "forward", lambda self, x: calls.append(1) or original(self, x))
    frozen(torch.randn(2, 32))
    assert calls == []  # int8, CPU: ours
    trainable(torch.randn(2, 32))
    assert calls == [1]


def test_an_8bit_base_on_cpu_gets_the_lean_layers(tiny_model):
    model, _, _ = load_base(str(tiny_model), bits=8)
    kinds = {type(m) for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert kinds == {FrozenInt8Linear}


def test_lora_on_the_lean_8bit_base_trains_like_bitsandbytes(tiny_model):
    """Same LoRA gradients through the whole tiny model as with bitsandbytes' own layers."""
    from recpeft.config import TrainConfig
    from recpeft.methods import get_method

    grads = []
    for lean in (True, False):
        model, tok, _ = load_base(str(tiny_model), bits=8)
        if not lean:
            for m in model.modules():
                if isinstance(m, bnb.nn.Linear8bitLt):
                    m.__class__ = bnb.nn.Linear8bitLt
        torch.manual_seed(0)
        model = get_method("lora").attach(model, TrainConfig(domain="news", lora_dropout=0.0), ["q_proj", "v_proj"], 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        model.train()
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        model(input_ids=ids, logits_to_keep=1).logits.sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n


def test_bench_int8_cpu_runs_on_a_tiny_model(tiny_model, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "int8.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_int8_cpu.py"), "--model", str(tiny_model),
                           "--batch", "2", "--tokens", "6", "--repeats", "1", "--output", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["layers"] > 0 and r["bitsandbytes_seconds"] > 0 and r["frozen_int8_linear_seconds"] > 0
    assert 0 <= r["frozen_int8_linear_max_abs_logit_diff_to_fp32"] < 1.0
    assert 0 <= r["bitsandbytes_max_abs_logit_diff_to_fp32"] < 1.0
    assert r["machine"]["processor"] and r["machine"]["cpus"] >= 1  # the CPU model, not platform's "x86_64"
