"""Verbaliser scoring: P(Yes) = softmax over the answer tokens' logits at the answer position."""

from __future__ import annotations

import torch

from .batches import Encoded, LengthBucketSampler, collate


def answer_logits(model, batch: dict[str, torch.Tensor], answer_ids: list[int]) -> torch.Tensor:
    """[batch, n_answers] logits of the answer tokens at the last position (only that row is computed)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=1, use_cache=False)
    return out.logits[:, -1, answer_ids].float()


@torch.no_grad()
def all_answer_logits(model, rows: list[Encoded], answer_ids: list[int], pad_id: int, batch_size: int = 16,
                      device=None, progress=None) -> torch.Tensor:
    """[len(rows), n_answers] answer logits of every row, in input order (batched by length, eval mode)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out = torch.zeros(len(rows), len(answer_ids))
    for idx in LengthBucketSampler([len(r.input_ids) for r in rows], batch_size, shuffle=False):
        batch = collate([rows[i] for i in idx], pad_id)
        out[idx] = answer_logits(model, {k: v.to(device) for k, v in batch.items()}, answer_ids).cpu()
        if progress is not None:
            progress.update(len(idx))
    model.train(was_training)
    return out


def score(model, rows: list[Encoded], answer_ids: list[int], pad_id: int, batch_size: int = 16,
          device=None, progress=None) -> list[float]:
    """Probability of the positive answer (last of answer_ids) for each row, in input order."""
    logits = all_answer_logits(model, rows, answer_ids, pad_id, batch_size, device, progress)
    return torch.softmax(logits, dim=-1)[:, -1].tolist()
