"""Fixtures: a tiny random llama-family decoder with a word-level tokenizer, built offline from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def build_tiny_model(folder: Path, seed: int = 0, layers: int = 2, extra_text: str = "") -> Path:
    """Save a 2-layer llama with a word-level vocabulary covering the embedded samples' text (and extra_text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from recpeft.data.formats.csvdir import load_sample
    from recpeft.domains import DOMAINS

    texts = ["### Instruction: ### Response: Yes No (none) . ; : ? Probe", "a; b. c: d?", extra_text]
    for name, dom in DOMAINS.items():
        data = load_sample(name)
        texts += [i.text() for i in data.items.values()]
        texts.append(f"{dom.liked_word} {dom.disliked_word} Will the user {dom.positive_verb} this {dom.item_noun} "
                     f"{dom.item_noun.capitalize()} You are a recommender system. Answer with Yes or No.")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_small_news(folder: Path, users: int = 12) -> Path:
    """The first `users` users of the embedded news sample (12: 285 training examples, a 40-step run in
    about a second with the tiny model)."""
    import shutil

    from recpeft.data.formats.csvdir import SAMPLE_ROOT

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_ROOT / "news" / "items.csv", folder / "items.csv")
    lines = (SAMPLE_ROOT / "news" / "interactions.csv").read_text().splitlines()
    keep_users = sorted({line.split(",")[0] for line in lines[1:]})[:users]
    keep = [line for line in lines[1:] if line.split(",")[0] in keep_users]
    (folder / "interactions.csv").write_text("\n".join([lines[0], *keep]) + "\n")
    return folder


@pytest.fixture(scope="session")
def small_news(tmp_path_factory) -> Path:
    return build_small_news(tmp_path_factory.mktemp("small-news"))


def run_settings(flags: dict, tiny_model: Path, data: Path, work: Path, **extra) -> dict:
    """Training settings for a test run: `flags`, the tiny model and data, runs and adapter under `work`."""
    return {**flags, "model": str(tiny_model), "data": str(data), "runs_dir": str(work / "runs"),
            "output_dir": str(work / "out"), **extra}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


TASK_TEXT = ("1 2 3 4 5 , Ratings from 1 to 5 How would the user rate this Answer with a single digit "
             "List this user's 3 favourite comma-separated genres topics product categories")


@pytest.fixture(scope="session")
def tiny_task_model(tmp_path_factory) -> Path:
    """The tiny model with digits, commas and the rating/interests prompt words in its vocabulary."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-task-llama"), extra_text=TASK_TEXT)


@pytest.fixture(scope="session")
def skewed_news(tmp_path_factory) -> Path:
    """4 news users whose clicks are 90% positive: a signal (the prior) that even a tiny random model
    picks up in a few steps, so a falling loss shows the training loop really optimises."""
    import shutil

    from recpeft.data.formats.csvdir import SAMPLE_ROOT

    folder = tmp_path_factory.mktemp("skewed-news")
    shutil.copy(SAMPLE_ROOT / "news" / "items.csv", folder / "items.csv")
    lines = (SAMPLE_ROOT / "news" / "interactions.csv").read_text().splitlines()
    users = sorted({line.split(",")[0] for line in lines[1:]})[:4]
    rows = [line.split(",") for line in lines[1:] if line.split(",")[0] in users]
    rows = [[u, i, t, "0" if k % 10 == 0 else "1"] for k, (u, i, t, _) in enumerate(rows)]
    (folder / "interactions.csv").write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    return folder


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty data cache, never the user's ~/.cache/recpeft/cache/data."""
    monkeypatch.setenv("RECPEFT_DATA_CACHE", str(tmp_path_factory.mktemp("data-cache")))


def make_adapter(tiny: Path, out: Path, method: str, domain: str = "news", seed: int = 0) -> Path:
    """A real adapter folder (trained 2 steps for the contract files), then given random weights with
    the seed so it visibly changes the model: after 2 steps the best-by-validation weights may still be
    the untrained identity."""
    from safetensors.torch import load_file, save_file

    from recpeft.config import TrainConfig
    from recpeft.training.trainer import train

    cfg = TrainConfig(domain=domain, model=str(tiny), output_dir=str(out), method=method, bits=32, max_steps=2,
                      eval_every=2, batch_size=4, eval_samples=4, test_samples=4, patience=0, lora_dropout=0.0,
                      threads=1, init_r=6, target_r=2, reduction_factor=4, seed=seed,
                      runs_dir=str(out.parent / "runs"))  # not ./runs of whatever folder pytest runs in
    train(cfg, show_progress=False)
    weights = out / "adapter_model.safetensors"
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in load_file(str(weights)).items()}
    save_file(state, str(weights))
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tiny_task_model, tmp_path_factory) -> dict[str, Path]:
    """One random adapter per method (and a second LoRA) on the tiny task model: {name: folder}."""
    root = tmp_path_factory.mktemp("adapters")
    specs = {"news": ("lora", "news", 1), "video": ("adalora", "video", 2), "ecommerce": ("adapter", "ecommerce", 3),
             "news2": ("lora", "news", 4)}
    return {name: make_adapter(tiny_task_model, root / name, m, d, s) for name, (m, d, s) in specs.items()}
