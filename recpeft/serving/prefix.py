"""Real-time scoring: encode the shared prompt prefix once, reuse its KV cache for every candidate.

Every candidate's prompt is the same prefix (system text, history, question) followed by a short
suffix (the candidate's text and the assistant-turn header). The prefix is run once; each batch of
suffixes then runs against a copy of its cache expanded along the batch, with position ids that
continue after the prefix. Suffixes are left-padded *between* prefix and suffix (masked out), so every
row's last position is its answer position and one `logits_to_keep=1` forward serves the batch.
Several requests (the server's micro-batches) share those forwards: `cached_answer_logits_many`.

Token ids are defined as tokenize(prefix) + tokenize(suffix), for the cached path and the naive path
alike; whitespace before the target moves into the suffix so this equals the joint tokenisation on
BPE tokenizers whose pre-tokeniser splits before a space (checked on SmolLM2 in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recpeft.evaluation.scoring import answer_columns, answer_logits, answer_rows
from recpeft.fusion.module import prefix_context
from recpeft.kernels.last_position import last_position
from recpeft.tasks.batches import Encoded, LengthBucketSampler, collate

SENTINEL = "\u27e6RECPEFT-TARGET\u27e7"
PREFIX_SLACK = 1.25  # several users' prefixes in one forward: at most 25% of it padding
PREFIX_TOKENS = 8192  # and at most this many prefix tokens (rows x longest) per forward
CUDA_SUFFIX_ROWS = 256  # on CUDA: candidates per forward, whatever their lengths


def suffix_grouping(device: torch.device, batch_size: int) -> tuple[float, int]:
    """(slack, rows) of the candidate forwards. On the CPU, length groups within 10% (padding costs
    compute there); on CUDA, one forward for up to CUDA_SUFFIX_ROWS candidates: a forward per length
    group made cached scoring of 100 candidates slower than one naive batched forward on the H200
    (0.337 against 0.270 s, issue 15), since each small forward is launch-bound."""
    if device.type == "cuda":
        return math.inf, max(batch_size, CUDA_SUFFIX_ROWS)
    return 1.1, batch_size


@dataclass(frozen=True)
class SplitPrompt:
    """A rendered prompt cut at the target: the prefix's ids and the text around the target."""

    prefix_ids: list[int]
    head: str  # whitespace that stood before the target
    tail: str  # everything after the target (end of turn, assistant header)

    def suffix_ids(self, tokenizer, target_text: str) -> list[int]:
        return tokenizer(self.head + target_text + self.tail, add_special_tokens=False)["input_ids"]


def split_prompt(tokenizer, rendered: str) -> SplitPrompt:
    """Cut a prompt rendered with SENTINEL as its target text into a shared prefix and a suffix template."""
    if rendered.count(SENTINEL) != 1:
        raise ValueError("the rendered prompt must contain the target sentinel exactly once")
    before, tail = rendered.split(SENTINEL)
    prefix = before.rstrip()
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    return SplitPrompt(ids, before[len(prefix):], tail)


def cached_answer_logits(model, prefix_ids: list[int], suffixes: list[list[int]], answer_ids: list[int],
                         pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """[len(suffixes), len(answer_ids)] answer logits for prefix + each suffix, the prefix encoded once."""
    return cached_answer_logits_many(model, [(prefix_ids, suffixes)], answer_ids, pad_id, batch_size)[0]


@torch.no_grad()
def cached_answer_logits_many(model, requests: list[tuple[list[int], list[list[int]]]], answer_ids: list[int],
                              pad_id: int, batch_size: int = 64) -> list[torch.Tensor]:
    """Answer logits of several requests (prefix, suffixes) at once: one [len(suffixes), len(answer_ids)]
    tensor per request.

    Prefixes of similar length run in one forward, right-padded (a real token never attends to the pads
    after it); the suffixes of those requests then run together in length groups, each row reading its
    own request's cache rows, with the prefix pads masked out and positions continuing after its real
    prefix. One request alone takes the same path with no padding and a shared (expanded) cache.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    out = [torch.empty(len(s), len(answer_ids)) for _, s in requests]
    for group in length_groups([len(p) for p, _ in requests], batch_size, slack=PREFIX_SLACK,
                               max_tokens=PREFIX_TOKENS):
        prefixes = [requests[g][0] for g in group]
        n_prefix = max(len(p) for p in prefixes)
        ids = torch.full((len(group), n_prefix), pad_id, dtype=torch.long)
        prefix_mask = torch.zeros((len(group), n_prefix), dtype=torch.long)
        for r, p in enumerate(prefixes):
            ids[r, :len(p)] = torch.tensor(p)
            prefix_mask[r, :len(p)] = 1
        padded = bool((prefix_mask == 0).any())
        prefix_ids = ids
        cache = DynamicCache(config=model.config)
        with last_position(model):  # the prefix's keys and values are all this forward is for
            model(input_ids=ids.to(device), attention_mask=prefix_mask.to(device) if padded else None,
                  cache=cache, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        rows = [(r, j) for r, g in enumerate(group) for j in range(len(requests[g][1]))]
        lengths = [len(requests[group[r]][1][j]) for r, j in rows]
        slack, rows_per_forward = suffix_grouping(device, batch_size)
        for idx in length_groups(lengths, rows_per_forward, slack=slack):
            batch = [rows[i] for i in idx]
            suffixes = [requests[group[r]][1][j] for r, j in batch]
            width = max(len(s) for s in suffixes)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), n_prefix + width), dtype=torch.long)
            owner = torch.tensor([r for r, _ in batch])
            mask[:, :n_prefix] = prefix_mask[owner]
            for b, s in enumerate(suffixes):
                ids[b, width - len(s):] = torch.tensor(s)
                mask[b, n_prefix + width - len(s):] = 1
            positions = prefix_mask[owner].sum(-1, keepdim=True) + (mask[:, n_prefix:].cumsum(-1) - 1).clamp(min=0)
            # A fresh cache per batch: forward appends the suffix keys to it. With one prefix, expand()
            # shares its memory; with several, each row takes a copy of its own request's rows.
            if len(group) == 1:
                rows_kv = [(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in kv]
            else:
                pick = owner.to(device)
                rows_kv = [(k.index_select(0, pick), v.index_select(0, pick)) for k, v in kv]
            batch_cache = DynamicCache(rows_kv, config=model.config)
            # prefix_context: --fusion's history context (recpeft.fusion.module) counts the prefix's items too
            with (answer_rows(model, answer_ids) as narrowed, last_position(model),
                  prefix_context(model, prefix_ids[owner])):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=positions.to(device), cache=batch_cache, use_cache=True,
                               logits_to_keep=1).logits[:, -1]
            scores = answer_columns(logits, narrowed, answer_ids).cpu()
            for b, (r, j) in enumerate(batch):
                out[group[r]][j] = scores[b]
    return out


def length_groups(lengths: list[int], batch_size: int, slack: float = 1.1,
                  max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size` rows of similar length: a batch's longest
    row is at most `slack` x its shortest, so padding stays under ~10% of the computed tokens (one
    batch of 100 candidate titles padded to the longest wasted 27% on the video sample), and, with
    max_tokens, rows x longest stays within it (a lone longer row still gets its own batch)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if (not groups or len(groups[-1]) == batch_size or lengths[i] > slack * lengths[groups[-1][0]]
                or (max_tokens is not None and (len(groups[-1]) + 1) * lengths[i] > max_tokens)):
            groups.append([])
        groups[-1].append(i)
    return groups


@torch.no_grad()
def naive_answer_logits(model, prefix_ids: list[int], suffixes: list[list[int]], answer_ids: list[int],
                        pad_id: int, batch_size: int = 1) -> torch.Tensor:
    """The reference path: a full forward of prefix + suffix per row (batch_size rows at a time)."""
    device = next(model.parameters()).device
    rows = [Encoded(prefix_ids + s, 0) for s in suffixes]
    out = torch.empty(len(rows), len(answer_ids))
    for idx in LengthBucketSampler([len(r.input_ids) for r in rows], batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], pad_id).items()}
        out[idx] = answer_logits(model, batch, answer_ids).cpu()
    return out
