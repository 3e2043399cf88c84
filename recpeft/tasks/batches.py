"""Tokenise examples once, then batch them by length with left padding (no fixed max_length).

Left padding puts every row's answer position last, so one `logits_to_keep=1` forward serves a whole
batch; explicit position ids keep a padded row's logits equal to the unpadded row's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recpeft.data.schema import RecData
from recpeft.domains import Domain
from recpeft.tasks.examples import Example
from recpeft.tasks.prompts import SYSTEM, render, user_message


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    label: int


@dataclass(frozen=True)
class EncodedGroup:
    """Rows that train together, in one micro-batch (listwise ranking: one user's candidates, the true item
    first). Batched like a row whose length is its longest member's; `collate` flattens the groups."""

    rows: tuple[Encoded, ...]

    @property
    def input_ids(self) -> list[int]:  # what length bucketing and batch sizing read
        return max((r.input_ids for r in self.rows), key=len)


def fit(tokenizer, message: Callable[[int], str], history_len: int, max_length: int, system: str = SYSTEM,
        reserve: int = 0) -> list[int]:
    """Token ids of render(message(n)) for the largest n <= history_len whose prompt fits in
    max_length - reserve tokens (reserve: room kept for an answer appended after the prompt)."""
    budget = max(1, max_length - reserve)
    n = history_len
    while True:
        ids = tokenizer(render(tokenizer, message(n), system), add_special_tokens=False)["input_ids"]
        if len(ids) <= budget or n == 0:
            return ids[-budget:]
        n -= 1


def encode(examples: list[Example], data: RecData, domain: Domain, tokenizer, history_len: int,
           max_length: int) -> list[Encoded]:
    """Render and tokenise each example; drop the oldest history items until it fits max_length."""
    return [Encoded(fit(tokenizer, lambda n, ex=ex: user_message(ex.prompt(data, n), domain), history_len,
                        max_length), ex.label) for ex in examples]


class LengthBucketSampler:
    """Batches of similar length. Shuffled (seeded, per epoch) for training, sorted for evaluation."""

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0):
        self.lengths, self.batch_size, self.shuffle, self.seed, self.epoch = lengths, batch_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
            # sort within windows of 50 batches: similar lengths together, different every epoch
            window = self.batch_size * 50
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s:s + window], key=self.lengths.__getitem__)]
        else:
            order.sort(key=self.lengths.__getitem__)
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.shuffle:
            # The short batch stays last: accelerate's sharding drops a short batch in the middle.
            short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
            rng.shuffle(batches)
            batches += short
        return iter(batches)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


def collate(rows: list[Encoded] | list[EncodedGroup], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Left-padded batch; the width is rounded up to `multiple` (recpeft.kernels.gpu.pad_multiple: 8 on CUDA).
    Groups are flattened in order, and "group_size" says how many rows each holds."""
    if rows and isinstance(rows[0], EncodedGroup):
        sizes = {len(g.rows) for g in rows}
        if len(sizes) != 1:
            raise ValueError(f"groups of different sizes in one batch: {sorted(sizes)}")
        return {**collate([r for g in rows for r in g.rows], pad_id, multiple), "group_size": sizes.pop()}
    width = -(-max(len(r.input_ids) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.input_ids):] = torch.tensor(r.input_ids)
        mask[i, width - len(r.input_ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = torch.tensor([r.label for r in rows], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[Encoded]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Encoded:
        return self.rows[i]


def loader(rows: list[Encoded], batch_size: int, shuffle: bool, pad_id: int, seed: int = 0, multiple: int = 1):
    sampler = LengthBucketSampler([len(r.input_ids) for r in rows], batch_size, shuffle, seed)
    return torch.utils.data.DataLoader(EncodedDataset(rows), batch_sampler=sampler,
                                       collate_fn=lambda b: collate(b, pad_id, multiple))
