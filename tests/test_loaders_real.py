"""Every loader on the real research data in ../shared/data (never copied into the repo): counts and a
sample record. Skipped, saying so, only where that folder is absent (CI has it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recpeft.data import load_data
from recpeft.data.load import detect_format
from recpeft.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [os.environ.get("RECPEFT_RESEARCH_DATA", ""), ROOT.parent / "shared" / "data",
              ROOT.parents[1] / "shared" / "data", "/work/shared/data"]
SHARED = next((Path(c) for c in CANDIDATES if c and (Path(c) / "SOURCES.md").is_file()), None)


def folder(name: str) -> Path:
    if SHARED is None or not (SHARED / name).is_dir():
        pytest.skip(f"research data folder {name}/ not found (looked in ../shared/data, /work/shared/data and "
                    "$RECPEFT_RESEARCH_DATA)")
    return SHARED / name


def test_movielens_100k():
    path = folder("ml-100k")
    assert detect_format(path) == "movielens"
    data = load_data("video", path)
    assert len(data.interactions) == 100_000
    assert len({x.user_id for x in data.interactions}) == 943 and len(data.items) == 1682 and len(data.users) == 943
    first = next(x for x in data.interactions if x.user_id == "196" and x.item_id == "242")
    assert (first.rating, first.timestamp) == (3.0, 881250949)
    toy = data.items["1"]
    assert toy.title == "Toy Story (1995)" and toy.categories == ("Animation", "Children's", "Comedy")
    assert data.users["1"] == {"age": "24", "gender": "M", "occupation": "technician", "zip": "85711"}
    assert sum(x.liked for x in data.interactions) == 55_375  # ratings 4 and 5


def test_amazon_scientific_unisrec():
    path = folder("amazon-scientific")
    assert detect_format(path) == "amazon-unisrec"
    data = load_data("ecommerce", path)
    users = {x.user_id for x in data.interactions}
    assert len(users) == 8442 and len(data.items) == 4385
    # every train row adds one target; each user also has a first item, a valid and a test target
    assert len(data.interactions) == 34_101 + 3 * 8442 and data.stats["rows"] == 34_101 + 2 * 8442
    seq = [x.item_id for x in data.interactions if x.user_id == "ABW8NXS7SV55K"]  # user 0
    assert seq[0] == "B00TNNWMXI" and len(seq) == 14  # test row: 13 history items + target
    item = data.items["B0000223SI"]
    assert item.title == "PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll"
    assert item.category == "Abrasive & Finishing Products Manual Sanding Products Sanding Rolls"
    assert item.description == "PORTER-CABLE"


def test_mind_sample():
    path = folder("mind-sample")
    assert detect_format(path) == "mind"
    data = load_data("news", path)
    assert len(data.items) == 2000 and data.stats["rows"] == 5000
    assert data.stats["history_ids"] == 138_932 and data.stats["history_ids_dropped"] == 133_578
    assert data.stats["impression_ids"] == 189_359 and data.stats["impression_ids_dropped"] == 184_049
    kept = data.stats["history_ids"] - data.stats["history_ids_dropped"]
    assert len(data.interactions) <= kept + 189_359 - 184_049  # histories kept once per user
    item = data.items["N34700"]
    assert item.category == "news" and item.title.startswith("New Florida Majority celebrates")
    assert {x.click for x in data.interactions} == {0, 1}


def test_amazon_fashion_reviews(tmp_path):
    path = folder("amazon-fashion-5core")
    assert detect_format(path) == "amazon"
    with pytest.raises(UserError, match="no item text for AMAZON_FASHION_5.json"):
        load_data("ecommerce", path)
    # With a metadata file (made here from the reviews' own asins) it loads.
    reviews = [json.loads(line) for line in (path / "AMAZON_FASHION_5.json").read_text().splitlines() if line.strip()]
    (tmp_path / "AMAZON_FASHION_5.json").symlink_to(path / "AMAZON_FASHION_5.json")
    asins = sorted({r["asin"] for r in reviews})
    (tmp_path / "meta_AMAZON_FASHION.json").write_text(
        "".join(json.dumps({"asin": a, "title": f"Product {a}", "category": ["Fashion", "Shoes"]}) + "\n"
                for a in asins))
    data = load_data("ecommerce", tmp_path)
    unique = {(r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in reviews}
    assert data.stats["rows"] == len(reviews) == 3176
    assert len(data.interactions) == len(unique) and data.stats["duplicates_dropped"] == 3176 - len(unique)
    first = next(x for x in data.interactions if x.user_id == "ALJ66O1Y6SLHA")
    assert (first.item_id, first.rating, first.timestamp) == ("B000K2PJ4K", 5.0, 1441324800)
    assert data.items["B000K2PJ4K"].category == "Shoes"
