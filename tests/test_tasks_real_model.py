"""The task layer on the real default model (SmolLM2-135M): verbalisers and generation really work."""

import pytest

from recpeft.evaluation.evaluate import evaluate
from recpeft.models.hub import DEFAULT_MODEL, pull
from recpeft.models.load import load_tokenizer
from recpeft.tasks.prompts import RATING_ANSWERS, answer_token_ids

pytestmark = pytest.mark.slow


def test_rating_digits_are_single_distinct_tokens_of_the_real_tokenizer():
    tok = load_tokenizer(str(pull(DEFAULT_MODEL)))
    ids = answer_token_ids(tok, RATING_ANSWERS)
    assert [tok.decode([i]).strip() for i in ids] == list(RATING_ANSWERS)


def test_zero_shot_interests_generation_on_the_real_model():
    report = evaluate("none", domain="news", task="interests", limit=2, threads=2, show_progress=False, write=False,
                      overrides={"history_len": 4})
    assert report.metrics["n"] == 2 and all(text.strip() for text in report.outputs["generated"])
    assert 0 <= report.metrics["f1"] <= 1
    print(report.outputs["generated"])
