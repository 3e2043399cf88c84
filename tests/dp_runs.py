"""The small DP training runs that tests/test_privacy.py and tests/test_privacy_users.py share."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import run_settings

# 40 seeded training examples in Poisson batches of 4 on average: 10 steps an epoch, so 14 steps cross an
# epoch boundary. Dropout on, so a wrong RNG state after a resume would show.
FLAGS = {"domain": "news", "train_samples": 40, "max_steps": 14, "batch_size": 4, "lr": 0.02, "eval_every": 7,
         "eval_samples": 8, "test_samples": 8, "patience": 0, "lora_dropout": 0.1, "threads": 1,
         "checkpoint_every": 3, "log_with": "none", "dp_epsilon": 4.0, "base_test": False}


def settings(tiny_model, data, work: Path, **extra) -> dict:
    return run_settings(FLAGS, tiny_model, data, work, **extra)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))
