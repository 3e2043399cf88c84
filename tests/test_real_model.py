"""The real default model, end to end: pull (or reuse the cache), two training steps, score."""

import json
import os

import pytest
import torch
from peft import PeftModel

from recpeft.config import TrainConfig
from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.evaluation.scoring import answer_logits, score
from recpeft.models.hub import DEFAULT_MODEL, pull
from recpeft.models.load import load_base
from recpeft.tasks.batches import collate, encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import answer_token_ids
from recpeft.training.trainer import train

pytestmark = pytest.mark.slow


def test_default_model_pulls_trains_two_steps_and_scores(tmp_path):
    folder = pull(DEFAULT_MODEL)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600 (issue 14)
    cfg = TrainConfig(domain="news", output_dir=str(tmp_path / "news"), max_steps=2, batch_size=4, eval_every=2,
                      eval_samples=16, test_samples=16, patience=0, threads=2, runs_dir=str(tmp_path / "runs"))
    result = train(cfg, show_progress=False)
    meta = json.loads((tmp_path / "news" / "recpeft.json").read_text())
    assert meta["base_model"]["name"] == DEFAULT_MODEL and meta["base_model"]["architecture"] == "llama"
    adapter_bytes = (tmp_path / "news" / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.01 * (folder / "model.safetensors").stat().st_size

    base, tok, _ = load_base(DEFAULT_MODEL)
    assert tok.convert_ids_to_tokens(answer_token_ids(tok)) == ["No", "Yes"]
    model = PeftModel.from_pretrained(base, str(tmp_path / "news")).eval()
    data, domain = load_sample("news"), get_domain("news")
    rows = encode(preference_examples(data)["test"][:6], data, domain, tok, 10, 320)
    probs = score(model, rows, answer_token_ids(tok), tok.pad_token_id, batch_size=3)
    assert all(0.0 < p < 1.0 for p in probs) and len(set(probs)) > 1
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(answer_logits(model, batch, answer_token_ids(tok)),
                                   answer_logits(result.model.eval(), batch, answer_token_ids(tok)), atol=1e-5, rtol=0)
