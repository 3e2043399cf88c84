"""The cached-prefix path on the real default model: same tokens as the joint tokenisation, same
probabilities as the naive path."""

import pytest
import torch

from recpeft.data.formats.csvdir import load_sample
from recpeft.data.schema import Item
from recpeft.domains import get_domain
from recpeft.models.hub import DEFAULT_MODEL
from recpeft.models.load import load_base
from recpeft.serving.prefix import SENTINEL, cached_answer_logits, naive_answer_logits, split_prompt
from recpeft.tasks.prompts import PreferencePrompt, answer_token_ids, render, user_message

pytestmark = pytest.mark.slow


def test_smollm2_split_tokenisation_and_cached_probabilities():
    model, tok, _ = load_base(DEFAULT_MODEL, bits=32)
    for domain in ("video", "news", "ecommerce"):
        items = list(load_sample(domain).items.values())
        liked, disliked = items[:6], items[6:9]
        message = user_message(PreferencePrompt(liked, disliked, Item(SENTINEL, SENTINEL)), get_domain(domain))
        split = split_prompt(tok, render(tok, message))
        cands = items[9:]
        suffixes = [split.suffix_ids(tok, c.text()) for c in cands]
        for c, s in zip(cands, suffixes):  # the split is invisible: it equals tokenising the whole prompt
            whole = render(tok, user_message(PreferencePrompt(liked, disliked, c), get_domain(domain)))
            assert split.prefix_ids + s == tok(whole, add_special_tokens=False)["input_ids"], c
    suffixes = suffixes[:12]  # ecommerce: the longest titles
    answers = answer_token_ids(tok)
    cached = torch.softmax(cached_answer_logits(model, split.prefix_ids, suffixes, answers, tok.pad_token_id, 5), -1)
    naive = torch.softmax(naive_answer_logits(model, split.prefix_ids, suffixes, answers, tok.pad_token_id), -1)
    assert (cached - naive).abs().max() < 1e-4
    assert cached[:, 1].std() > 1e-4  # different candidates, different probabilities
