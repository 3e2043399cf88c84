"""Loaders on small hand-made files: what each record looks like, detection, MIND's dropped ids, the cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_loaders_bad_input import write

from recpeft.data import load as load_module
from recpeft.data import load_data
from recpeft.data.load import detect_format
from recpeft.data.schema import InstructionData, Item, RecData
from recpeft.errors import UserError


def test_item_categories_and_category_fill_each_other():
    assert Item("1", "T", "Drama").categories == ("Drama",)
    both = Item("1", "T", categories=("Action", "Crime"))
    assert both.category == "Action, Crime" and both.text() == "T (Action, Crime)"
    assert Item("1", "T").categories == () and Item("1", "T").text() == "T"


def test_movielens_100k_and_1m_records(tmp_path):
    ml = load_data("video", write(tmp_path / "100k", "movielens")[0])
    assert ml.items["1"].categories == () and ml.users["2"] == {"age": "53", "gender": "F", "occupation": "other",
                                                                 "zip": "94043"}
    assert [(x.user_id, x.item_id, x.rating) for x in ml.interactions][:2] == [("1", "1", 5.0), ("1", "2", 3.0)]
    m1 = load_data("video", write(tmp_path / "1m", "movielens-1m")[0])
    assert m1.items["1"].categories == ("Animation", "Children's", "Comedy") and m1.users["1"]["age"] == "1"
    assert m1.name.startswith("movielens-1m") and len(m1.interactions) == 3


def test_latin1_titles_read_as_latin1(tmp_path):
    folder, _ = write(tmp_path / "d", "movielens")
    item = (folder / "u.item").read_text().replace("Heat (1995)", "Café (1995)")
    (folder / "u.item").write_bytes(item.encode("latin-1"))
    assert load_data("video", folder).items["2"].title == "Café (1995)"


def test_amazon_reviews_use_metadata_text_and_need_it(tmp_path):
    folder, _ = write(tmp_path / "d", "amazon")
    data = load_data("ecommerce", folder)
    assert data.items["A1"] == Item("A1", "Red Shoe", "Sneakers", ("Sneakers",), "")
    assert data.items["A2"].text() == "Blue Hat"
    (folder / "meta_Test.json").unlink()
    with pytest.raises(UserError, match="no item text"):
        load_data("ecommerce", folder)


def test_unisrec_sequences_splits_and_text(tmp_path):
    data = load_data("ecommerce", write(tmp_path / "d", "amazon-unisrec")[0])
    assert [x.item_id for x in data.interactions] == ["A1", "A2", "A3", "A1"]
    assert [x.timestamp for x in data.interactions] == [0, 1, 2, 3] and all(x.click == 1 for x in data.interactions)
    assert data.items["A1"] == Item("A1", "Red Shoe", "Shoes", ("Shoes",), "Acme")  # root "Root" cut
    assert data.items["A3"].description == ""


def test_unisrec_without_text_is_a_clear_error(tmp_path):
    folder, _ = write(tmp_path / "d", "amazon-unisrec")
    (folder / "T.text").unlink()
    with pytest.raises(UserError, match="no item text: T.text is missing"):
        load_data("ecommerce", folder)


def test_mind_impressions_history_and_dropped_ids(tmp_path, capsys):
    folder, _ = write(tmp_path / "d", "mind")
    behaviors = (folder / "behaviors.tsv").read_text().replace("\tN1\tN2-1 N1-0", "\tN1 N77 N78\tN2-1 N1-0 N99-1")
    (folder / "behaviors.tsv").write_text(behaviors)
    data = load_data("news", folder)
    u1 = [(x.item_id, x.click) for x in data.interactions if x.user_id == "U1"]
    # history (from U1's earliest impression) first, then impressions in time order
    assert u1 == [("N1", 1), ("N1", 0), ("N2", 1), ("N2", 0)]
    times = [x.timestamp for x in data.interactions if x.user_id == "U1"]
    assert times[0] < times[1] == times[2] < times[3]
    assert data.stats["history_ids_dropped"] == 2 and data.stats["impression_ids_dropped"] == 1
    assert "dropped 2 of 3 history ids and 1 of" in capsys.readouterr().err
    load_data("news", folder)  # cached: the note is said again
    assert "dropped 2 of 3 history ids" in capsys.readouterr().err


def test_alpaca_records_labels_and_splits(tmp_path):
    jl = load_data("video", write(tmp_path / "a", "alpaca")[0])
    arr = load_data("video", write(tmp_path / "b", "alpaca-array")[0])
    assert isinstance(jl, InstructionData) and [x.label for x in jl.examples] == [1, 0]
    assert [x.split for x in jl.examples] == ["train", "train"] and arr.split("test")[1].input == "B"
    assert arr.examples[1].source.endswith("test.json:3")
    assert arr.examples[0].prompt().endswith("### Instruction:\nLike?\n\n### Input:\nA\n\n### Response:\n")
    folder = tmp_path / "both"
    folder.mkdir()
    for src in (tmp_path / "a" / "train.jsonl", tmp_path / "b" / "test.json"):
        (folder / src.name).write_bytes(src.read_bytes())
    both = load_data("video", folder)
    assert [x.split for x in both.examples] == ["test", "test", "train", "train"]


def test_jsonl_inline_titles_iso_times_and_items_file(tmp_path):
    data = load_data("ecommerce", write(tmp_path / "d", "jsonl")[0])
    assert data.items["I1"].categories == ("X", "Y") and data.items["I2"].title == "Beta"
    assert [x.timestamp for x in data.interactions if x.item_id == "I2"] == [1704067200]
    single = tmp_path / "one.jsonl"
    single.write_text('{"user_id": 1, "item_id": 7, "timestamp": 5, "rating": 4, "title": "Seven"}\n')
    assert load_data("ecommerce", single).interactions[0].user_id == "1"


def test_detection_names_candidates_or_what_is_expected(tmp_path):
    folder, _ = write(tmp_path / "d", "csv")
    assert detect_format(folder) == "csv"
    write(folder, "mind")
    with pytest.raises(UserError, match="fit mind, csv; pass --format mind or --format csv"):
        load_data("news", folder)
    assert load_data("news", folder, fmt="mind").stats["format"] == "mind"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot tell the data format.*u.data"):
        load_data("news", tmp_path / "empty")
    with pytest.raises(UserError, match="unknown data format 'tsv'"):
        load_data("news", folder, fmt="tsv")
    with pytest.raises(UserError, match="needs --data"):
        load_data("news", None, fmt="mind")


def test_second_load_hits_the_cache_and_a_changed_file_misses_it(tmp_path, monkeypatch):
    folder, _ = write(tmp_path / "d", "movielens")
    first = load_data("video", folder)
    entries = list(Path(os.environ["RECPEFT_DATA_CACHE"]).iterdir())
    assert (len(entries) == 1 and (entries[0] / "recpeft.json").is_file()
            and (entries[0] / "dataset_dict.json").is_file())
    calls = []
    real = load_module.FORMATS["movielens"].load
    monkeypatch.setattr(load_module.FORMATS["movielens"], "load", lambda *a: calls.append(1) or real(*a))
    again = load_data("video", folder)
    assert calls == [] and again.items == first.items and again.interactions == first.interactions
    assert again.users == first.users and again.stats == first.stats
    data_file = folder / "u.data"
    data_file.write_text(data_file.read_text() + "2\t2\t5\t104\n")
    os.utime(data_file, (time.time() + 5, time.time() + 5))
    changed = load_data("video", folder)
    assert calls == [1] and len(changed.interactions) == len(first.interactions) + 1
    assert load_data("video", folder, on_bad_rows="skip") and calls == [1, 1]  # the policy is part of the key


def test_cache_roundtrip_of_instructions_and_empty_optional_columns(tmp_path):
    path, _ = write(tmp_path / "a", "alpaca")
    cold = load_data("video", path)
    warm = load_data("video", path)
    assert warm.examples == cold.examples and isinstance(warm, InstructionData)
    folder, _ = write(tmp_path / "u", "amazon-unisrec")  # no ratings, no users
    cold, warm = load_data("ecommerce", folder), load_data("ecommerce", folder)
    assert isinstance(warm, RecData) and warm.interactions == cold.interactions and warm.items == cold.items


def test_cache_off_and_unwritable_cache_still_load(tmp_path, monkeypatch, capsys):
    folder, _ = write(tmp_path / "d", "csv")
    monkeypatch.setenv("RECPEFT_DATA_CACHE", "off")
    assert load_data("news", folder).interactions
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("RECPEFT_DATA_CACHE", str(blocker / "cache"))
    assert load_data("news", folder).interactions
    assert "could not write the data cache" in capsys.readouterr().err


