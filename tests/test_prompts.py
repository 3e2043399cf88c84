import torch

from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.evaluation.scoring import answer_logits
from recpeft.models.load import load_base
from recpeft.tasks.batches import collate, encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import answer_token_ids, render, user_message


def test_prompt_lists_liked_and_disliked_history_then_asks_before_the_target():
    data, domain = load_sample("video"), get_domain("video")
    ex = preference_examples(data)["test"][0]
    p = ex.prompt(data, history_len=10)
    recent = ex.history[-10:]
    assert [i.item_id for i in p.liked] == [x.item_id for x in recent if x.liked]
    assert [i.item_id for i in p.disliked] == [x.item_id for x in recent if not x.liked]
    msg = user_message(p, domain)
    target = data.items[ex.target.item_id].text()
    assert msg.startswith("Liked: ") and "\nDisliked: " in msg
    assert msg.endswith(f"Movie or show: {target}")  # the question precedes the candidate
    assert msg.index("Will the user like this movie or show?") < msg.index(target)
    for item in p.liked + p.disliked:
        assert item.text() in msg


def test_news_prompt_talks_about_clicks():
    data = load_sample("news")
    ex = preference_examples(data)["valid"][0]
    msg = user_message(ex.prompt(data, 10), get_domain("news"))
    assert msg.startswith("Clicked: ") and "Will the user click this news article?" in msg


def test_verbaliser_tokens_are_distinct_and_follow_the_prompt(tiny_model):
    _, tok, _ = load_base(str(tiny_model))
    no, yes = answer_token_ids(tok)
    assert no != yes
    assert tok.convert_ids_to_tokens([no, yes]) == ["No", "Yes"]
    assert render(tok, "Hi").endswith("### Response:\n")


def test_history_is_trimmed_oldest_first_to_fit_max_length(tiny_model):
    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    _, tok, _ = load_base(str(tiny_model))
    ex = preference_examples(data)["test"][:5]
    long = encode(ex, data, domain, tok, history_len=10, max_length=10_000)
    short = encode(ex, data, domain, tok, history_len=10, max_length=60)
    assert all(len(s.input_ids) <= 60 for s in short)
    assert all(len(s.input_ids) < len(lg.input_ids) for s, lg in zip(short, long))


def test_left_padding_does_not_change_the_answer_logits(tiny_model):
    data, domain = load_sample("news"), get_domain("news")
    model, tok, _ = load_base(str(tiny_model))
    rows = encode(preference_examples(data)["test"][:6], data, domain, tok, 10, 1000)
    assert len({len(r.input_ids) for r in rows}) > 1
    ids = answer_token_ids(tok)
    batched = answer_logits(model, collate(rows, tok.pad_token_id), ids)
    single = torch.cat([answer_logits(model, collate([r], tok.pad_token_id), ids) for r in rows])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
