"""Where items' soft tokens go in a prompt: a marker after each item's title, turned into virtual ids.

Prompts are built as text everywhere (training, cached evaluation, serving), so an item's place is marked
in its text: `mark(item, row)` appends "⟦item:ROW⟧" to the title ("Heat (1995)⟦item:12⟧ (Action)").
`FusionTokenizer` wraps the model's tokenizer: it tokenises the text between markers as usual and writes
each marker as `tokens` virtual ids past the vocabulary (recpeft.fusion.module places them). Every path
tokenises through the wrapper, so training and serving see the same ids.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from recpeft.data.schema import Item

MARKER = "\u27e6item:{}\u27e7"
_MARKER_RE = re.compile("\u27e6item:(\\d+)\u27e7")


def mark(item: Item, row: int) -> Item:
    """The item with its soft-token marker after the title (row 0: an item without a vector)."""
    return dataclasses.replace(item, title=item.title + MARKER.format(row))


def strip(text: str) -> str:
    """Text without markers (what a person should read)."""
    return _MARKER_RE.sub("", text)


class FusionTokenizer:
    """The base tokenizer, with item markers written as virtual ids (offset + row * tokens + j). Anything
    else is the base tokenizer's (attributes and methods are forwarded)."""

    def __init__(self, tokenizer, offset: int, tokens: int):
        self.base, self.offset, self.tokens = tokenizer, offset, tokens

    def __getattr__(self, name):
        return getattr(self.base, name)

    def ids(self, text: str, **kwargs) -> list[int]:
        out: list[int] = []
        pos = 0
        for m in _MARKER_RE.finditer(text):
            if m.start() > pos:
                out += self.base(text[pos:m.start()], **kwargs)["input_ids"]
            row = int(m.group(1))
            out += [self.offset + row * self.tokens + j for j in range(self.tokens)]
            pos = m.end()
        if pos < len(text) or not out:
            out += self.base(text[pos:], **kwargs)["input_ids"]
        return out

    def __call__(self, text, add_special_tokens: bool = True, return_tensors: str | None = None, **kwargs):
        if not isinstance(text, str) or "\u27e6item:" not in text:
            return self.base(text, add_special_tokens=add_special_tokens, return_tensors=return_tensors, **kwargs)
        ids = self.ids(text, add_special_tokens=False, **kwargs)  # recpeft's prompts never add special tokens
        if return_tensors == "pt":
            t = torch.tensor([ids])
            return {"input_ids": t, "attention_mask": torch.ones_like(t)}
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids, **kwargs) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.base.decode([i for i in ids if i < self.offset], **kwargs)
