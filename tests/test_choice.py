"""The choice task (LlamaRec's verbaliser): candidates under letters in one question, scored by the letters."""

import math

import pytest
import torch
from conftest import TASK_TEXT, build_tiny_model

import recpeft
from recpeft.config import TrainConfig, build_config
from recpeft.data.formats.csvdir import load_sample
from recpeft.domains import get_domain
from recpeft.errors import UserError
from recpeft.evaluation.scoring import all_answer_logits
from recpeft.models.load import load_base
from recpeft.tasks import get_task
from recpeft.tasks.choice import listed_order
from recpeft.tasks.prompts import CHOICE_LETTERS
from recpeft.training.trainer import train

CHOICE_TEXT = " ".join(CHOICE_LETTERS) + " Which will next Candidates the letter of one candidate"


@pytest.fixture(scope="module")
def choice_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-choice"), extra_text=f"{TASK_TEXT} {CHOICE_TEXT}")


@pytest.fixture(scope="module")
def choice_adapter(choice_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("choice-adapter")
    cfg = TrainConfig(model=str(choice_model), task="choice", domain="ecommerce", negatives=5, max_steps=30,
                      batch_size=8, lr=3e-2, eval_every=30, eval_samples=12, test_samples=12, patience=0,
                      lora_dropout=0.0, threads=1, train_samples=8, output_dir=str(out))
    return out, train(cfg, show_progress=False)


def test_choice_trains_and_saves_an_adapter_that_ranks_with_its_letters(choice_adapter):
    out, result = choice_adapter
    m = result.metrics
    assert m["task"] == "choice" and m["main_metric"] == "ndcg@10" and m["train_examples"] == 8  # one row each
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.05, (first, last)  # 8 questions seen again and again: the loss must fall
    assert not math.isnan(m["test_ndcg@10"]) and m["test_n"] == 12 and "test_cold_n" in m
    meta = recpeft.adapter_meta.read_meta(out)
    assert meta.task == "choice" and meta.verbalizer["answers"] == list(CHOICE_LETTERS[:6])


def test_each_question_lists_the_candidates_in_a_seeded_order_and_labels_the_true_letter(choice_model):
    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    _, tok, _ = load_base(str(choice_model))
    cfg = TrainConfig(task="choice", negatives=5, seed=3)
    task, ranking = get_task("choice", data, domain, tok, cfg), get_task("ranking", data, domain, tok, cfg)
    evalset = task.eval_set("test", 10)
    assert evalset.examples == ranking.eval_set("test", 10).examples  # the ranking task's (and baselines') lists
    assert len(evalset.rows) == 10
    orders = [listed_order(ex, 3) for ex in evalset.examples]
    assert [r.label for r in evalset.rows] == [o.index(0) for o in orders]
    assert len({r.label for r in evalset.rows}) > 1  # the true item is not always under the same letter
    for ex, row, order in zip(evalset.examples, evalset.rows, orders):
        text = tok.decode(row.input_ids)
        positions = [text.index(tok.decode(tok(data.items[ex.candidates[k]].text())["input_ids"])) for k in order]
        assert positions == sorted(positions)  # listed in that order, after the history
    assert listed_order(evalset.examples[0], 4) != orders[0] or listed_order(evalset.examples[1], 4) != orders[1]


def test_scores_are_the_letters_probabilities_in_candidate_order(choice_model):
    from recpeft.methods import get_method

    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    model, tok, _ = load_base(str(choice_model))
    cfg = TrainConfig(task="choice", negatives=5, seed=3, lora_dropout=0.0)
    model = get_method("lora").attach(model, cfg, ["q_proj", "v_proj"], 10)
    with torch.no_grad():  # a non-zero adapter, so the scores differ between letters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    task = get_task("choice", data, domain, tok, cfg)
    evalset = task.eval_set("test", 6)
    result = task.evaluate(model, evalset)
    logits = all_answer_logits(model, evalset.rows, task.answer_ids, tok.pad_token_id)
    for ex, scores, row in zip(evalset.examples, result.outputs["scores"], logits):
        letters = torch.softmax(row, -1)
        order = listed_order(ex, 3)
        assert scores == pytest.approx([letters[order.index(k)].item() for k in range(6)], abs=1e-6)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["n"] == 6 and 0 <= result.metrics["ndcg@10"] <= 1


def test_the_loss_is_a_softmax_over_the_letters(choice_model):
    from recpeft.tasks.batches import collate

    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    model, tok, _ = load_base(str(choice_model))
    task = get_task("choice", data, domain, tok, TrainConfig(task="choice", negatives=5, seed=3))
    batch = collate(task.train_rows(4), tok.pad_token_id)
    with torch.no_grad():
        logits = all_answer_logits(model, task.train_rows(4), task.answer_ids, tok.pad_token_id)
        by_hand = torch.nn.functional.cross_entropy(logits, batch["labels"])
        assert torch.allclose(task.loss(model, batch), by_hand, atol=1e-5)


def test_more_candidates_than_letters_is_a_config_error():
    with pytest.raises(UserError, match="at most 20 candidates"):
        build_config(None, task="choice", negatives=20)
    assert build_config(None, task="choice", negatives=19).negatives == 19


def test_a_loaded_choice_adapter_ranks_in_one_question(choice_adapter):
    out, _ = choice_adapter
    rec = recpeft.load(out)
    data = load_sample("ecommerce")
    titles = [i.title for i in list(data.items.values())[:6]]
    history = [titles[0], (titles[1], False)]
    scores = rec.score(history, titles[2:6])
    assert sum(scores) == pytest.approx(1.0, abs=1e-5) and len(set(scores)) > 1
    assert rec.score(history, titles[2:6], naive=True) == scores  # one path
    prepared = rec.prepare(history, titles[2:6])
    assert rec.score_prepared([prepared, rec.prepare(history, titles[2:4])])[0] == pytest.approx(scores, abs=1e-5)
    ranked = rec.rank(history, titles[2:6], k=2)
    assert [s for _, s in ranked] == sorted(scores, reverse=True)[:2]
    with pytest.raises(UserError, match="at most 6 candidates"):
        rec.rank(history, [i.title for i in list(data.items.values())[:7]])


def test_a_question_too_long_for_max_length_is_refused_not_cut(choice_model):
    data, domain = load_sample("ecommerce"), get_domain("ecommerce")
    _, tok, _ = load_base(str(choice_model))
    task = get_task("choice", data, domain, tok, TrainConfig(task="choice", negatives=5, max_length=30))
    with pytest.raises(UserError, match=r"choice questions .* need more than --max-length 30 tokens .* at least \d+"):
        task.train_rows(4)
    roomy = get_task("choice", data, domain, tok, TrainConfig(task="choice", negatives=5, max_length=2000))
    assert all(tok.decode(r.input_ids).count("You are a recommender") == 1 for r in roomy.train_rows(4))


def test_choice_with_cf_fusion_and_with_dp_trains(choice_model, tmp_path):
    from recpeft.fusion.vectors import collaborative

    data = load_sample("ecommerce")
    assert collaborative(data, "choice", dim=4, seed=1).fingerprint == collaborative(data, "ranking", dim=4,
                                                                                      seed=1).fingerprint
    base = dict(model=str(choice_model), task="choice", domain="ecommerce", negatives=5, max_steps=2, batch_size=4,
                eval_every=2, eval_samples=4, test_samples=4, threads=1, train_samples=8, base_test=False)
    fused = train(build_config(**base, fusion="cf", fusion_dim=4), save=False, show_progress=False)
    assert fused.metrics["task"] == "choice" and not math.isnan(fused.metrics["test_ndcg@10"])
    private = train(build_config(**base, dp_epsilon=8.0, output_dir=str(tmp_path / "dp")), show_progress=False)
    assert private.metrics["privacy"]["steps"] == 2 and private.metrics["privacy"]["training_examples"] == 8


def test_a_choice_adapter_is_not_combined_with_a_pointwise_one_nor_simulated(choice_adapter, choice_model, tmp_path):
    from recpeft.evaluation.sessions import simulate_llm
    from recpeft.serving.merge import combine_adapters

    out, _ = choice_adapter
    ranking = tmp_path / "ranking"
    train(TrainConfig(model=str(choice_model), task="ranking", domain="ecommerce", negatives=5, max_steps=1,
                      batch_size=4, eval_every=1, eval_samples=4, test_samples=4, threads=1, train_samples=4,
                      base_test=False, output_dir=str(ranking)), show_progress=False)
    with pytest.raises(UserError, match="answer different questions"):
        combine_adapters([out, ranking], [0.5, 0.5], tmp_path / "both")
    assert not (tmp_path / "both").exists()
    with pytest.raises(UserError, match="choice adapter"):
        simulate_llm(recpeft.load(out), load_sample("ecommerce"), [], k=2, turns=1)


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["news", "video", "ecommerce"])
def test_the_default_max_length_of_choice_fits_twenty_candidates_of_each_sample(domain):
    """At the old fixed 320 tokens, the news sample's 20-candidate questions (334 tokens) were refused."""
    from transformers import AutoTokenizer

    from recpeft.models.hub import DEFAULT_MODEL, resolve

    tok = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL))
    cfg = build_config(task="choice", domain=domain)
    assert cfg.negatives == 19 and cfg.max_length == 800 and build_config().max_length == 320
    assert build_config(task="choice", max_length=400).max_length == 400  # a given length is kept
    rows = get_task("choice", load_sample(domain), get_domain(domain), tok, cfg).train_rows(64)
    assert len(rows) == 64 and all(len(r.input_ids) <= 800 for r in rows)
    short = get_task("choice", load_sample(domain), get_domain(domain), tok,
                     build_config(task="choice", domain=domain, history_len=1)).train_rows(64)
    assert sum(map(len, (r.input_ids for r in rows))) > sum(map(len, (r.input_ids for r in short))) + 64 * 40
