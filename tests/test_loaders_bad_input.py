"""Bad input, per loader: each malformed file gives a UserError at file:line; through the CLI, exit
code 2, one line on stderr and nothing written. Row-level problems can be skipped (--on-bad-rows skip).

Formats that are not JSON get a malformed line where JSON formats get a bad JSON line; formats
without ratings (UniSRec, MIND) get a non-numeric id or label in their place.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recpeft.data import load_data
from recpeft.errors import UserError

FLAGS = "|".join(["0"] * 19)
GOOD = {
    "movielens": {
        "u.item": f"1|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS}\n2|Heat (1995)|01-Jan-1995||http://y|{FLAGS}\n",
        "u.data": "1\t1\t5\t100\n1\t2\t3\t101\n2\t1\t4\t102\n2\t2\t1\t103\n",
        "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
    },
    "movielens-1m": {
        "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n",
        "ratings.dat": "1::1::5::100\n1::2::3::101\n2::1::4::102\n",
        "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    },
    "amazon": {
        "meta_Test.json": '{"asin": "A1", "title": "Red Shoe", "category": ["Shoes", "Sneakers"]}\n'
                          '{"asin": "A2", "title": "Blue Hat"}\n',
        "reviews.json": '{"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 100}\n'
                        '{"reviewerID": "U1", "asin": "A2", "overall": 2.0, "unixReviewTime": 101}\n'
                        '{"reviewerID": "U2", "asin": "A1", "overall": 4.0, "unixReviewTime": 102}\n',
    },
    "amazon-unisrec": {
        "T.text": "item_id:token\ttext:token_seq\nA1\tRed Shoe. Root Shoes. Acme. \nA2\tBlue Hat. Root Hats. Acme. \n"
                  "A3\tGreen Sock. Root Socks. . \n",
        "T.item2index": "A1\t0\nA2\t1\nA3\t2\n",
        "T.train.inter": "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0\t1\n",
        "T.valid.inter": "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1\t2\n",
        "T.test.inter": "user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1 2\t0\n",
    },
    "mind": {
        "news.tsv": "N1\tsports\tsoccer\tTeam wins\tAbstract one\turl\t[]\t[]\n"
                    "N2\tnews\tpolitics\tVote today\tAbstract two\turl\t[]\t[]\n",
        "behaviors.tsv": "1\tU1\t11/12/2019 2:14:46 PM\tN1\tN2-1 N1-0\n2\tU2\t11/13/2019 5:53:12 AM\t\tN1-1\n"
                         "3\tU1\t11/14/2019 8:00:00 AM\tN1\tN2-0\n",
    },
    "alpaca": {
        "train.jsonl": '{"instruction": "Will the user like it?", "input": "User liked: A", "output": "Yes."}\n'
                       '{"instruction": "Will the user like it?", "input": "User liked: B", "output": "No."}\n',
    },
    "alpaca-array": {
        "test.json": '[\n  {"instruction": "Like?", "input": "A", "output": "Yes."},\n'
                     '  {"instruction": "Like?", "input": "B", "output": "No."}\n]\n',
    },
    "jsonl": {
        "items.jsonl": '{"item_id": "I1", "title": "Alpha", "category": ["X", "Y"]}\n',
        "interactions.jsonl": '{"user_id": "u1", "item_id": "I1", "timestamp": 1, "rating": 5}\n'
                              '{"user_id": "u1", "item_id": "I2", "timestamp": "2024-01-01T00:00:00Z", "click": 0, '
                              '"title": "Beta"}\n'
                              '{"user_id": "u2", "item_id": "I1", "timestamp": 3, "click": 1}\n',
    },
    "csv": {
        "items.csv": "item_id,title,category\nA,Alpha,X\nB,Beta,Y\n",
        "interactions.csv": "user_id,item_id,timestamp,rating\nu1,A,1,5\nu1,B,2,2\nu2,A,3,4\n",
    },
}
FORMAT = {"movielens-1m": "movielens", "alpaca-array": "alpaca"}


def replace_line(text: str, n: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[n - 1] = new + "\n"
    return "".join(lines)


# (fixture, case) -> (file, transform of its text -> str or bytes, line expected in the error, skippable)
CASES = {
    ("movielens", "malformed line"): ("u.item", lambda t: replace_line(t, 2, f"2|Heat|x||y|{FLAGS[:-1]}x"), 2, True),
    ("movielens", "missing column"): ("u.data", lambda t: replace_line(t, 3, "2\t1\t4"), 3, True),
    ("movielens", "non-numeric rating"): ("u.data", lambda t: replace_line(t, 2, "1\t2\tfive\t101"), 2, True),
    ("movielens", "unknown item"): ("u.data", lambda t: replace_line(t, 4, "2\t99\t1\t103"), 4, True),
    ("movielens", "empty file"): ("u.data", lambda t: "", 1, False),
    ("movielens", "wrong encoding"): ("u.item", lambda t: t.encode("utf-16"), 1, False),
    ("movielens-1m", "missing column"): ("ratings.dat", lambda t: replace_line(t, 2, "1::2::3"), 2, True),
    ("movielens-1m", "non-numeric rating"): ("ratings.dat", lambda t: replace_line(t, 3, "2::1::x::1"), 3, True),
    ("amazon", "bad JSON line"): ("reviews.json", lambda t: replace_line(t, 2, '{"reviewerID": "U1", '), 2, True),
    ("amazon", "missing column"): ("reviews.json", lambda t: t.replace(', "overall": 4.0', ""), 3, True),
    ("amazon", "non-numeric rating"): ("reviews.json", lambda t: t.replace("2.0", '"two"'), 2, True),
    ("amazon", "unknown item"): ("reviews.json", lambda t: t.replace('"A2"', '"A9"'), 2, True),
    ("amazon", "empty file"): ("meta_Test.json", lambda t: "\n", 1, False),
    ("amazon", "wrong encoding"): ("reviews.json", lambda t: t.encode().replace(b"U2", b"U\xff"), 3, True),
    ("amazon-unisrec", "missing column"): ("T.train.inter", lambda t: replace_line(t, 2, "0\t0"), 2, True),
    ("amazon-unisrec", "non-numeric id"): ("T.valid.inter", lambda t: replace_line(t, 2, "0\t0 x\t2"), 2, True),
    ("amazon-unisrec", "unknown item"): ("T.test.inter", lambda t: replace_line(t, 2, "0\t0 1 7\t0"), 2, True),
    ("amazon-unisrec", "history out of order"): ("T.test.inter", lambda t: replace_line(t, 2, "0\t1 0 2\t0"), 2, True),
    ("amazon-unisrec", "empty file"): ("T.text", lambda t: "", 1, False),
    ("amazon-unisrec", "wrong encoding"): ("T.text", lambda t: t.encode("utf-16"), 1, False),
    ("mind", "malformed line"): ("behaviors.tsv", lambda t: t.replace("N2-1", "N2=1"), 1, True),
    ("mind", "missing column"): ("behaviors.tsv", lambda t: replace_line(t, 2, "2\tU2\t11/13/2019 5:53:12 AM"),
                                 2, True),
    ("mind", "non-numeric label"): ("behaviors.tsv", lambda t: t.replace("N1-1", "N1-yes"), 2, True),
    ("mind", "malformed history id"): ("behaviors.tsv", lambda t: replace_line(t, 3, "3\tU1\t11/14/2019 8:00:00 AM\t"
                                                                             "N1 17\tN2-0"), 3, True),
    ("mind", "bad time"): ("behaviors.tsv", lambda t: t.replace("11/13/2019", "2019-11-13"), 2, True),
    ("mind", "empty file"): ("news.tsv", lambda t: "", 1, False),
    ("mind", "wrong encoding"): ("news.tsv", lambda t: t.encode().replace(b"Vote", b"V\xe9te"), 2, True),
    ("alpaca", "bad JSON line"): ("train.jsonl", lambda t: replace_line(t, 2, '{"instruction": "x",'), 2, True),
    ("alpaca", "missing column"): ("train.jsonl", lambda t: t.replace(', "output": "No."', ""), 2, True),
    ("alpaca", "non-string output"): ("train.jsonl", lambda t: t.replace('"Yes."', "1"), 1, True),
    ("alpaca", "empty file"): ("train.jsonl", lambda t: "  \n", 1, False),
    ("alpaca", "wrong encoding"): ("train.jsonl", lambda t: t.encode("utf-16"), 1, False),
    ("alpaca-array", "bad JSON in an array"): ("test.json", lambda t: t.replace('"B",', '"B"'), 3, False),
    ("alpaca-array", "missing column"): ("test.json", lambda t: t.replace(', "output": "No."', ""), 3, True),
    ("jsonl", "bad JSON line"): ("interactions.jsonl", lambda t: replace_line(t, 3, "{'user_id': 'u2'}"), 3, True),
    ("jsonl", "missing column"): ("interactions.jsonl", lambda t: t.replace('"timestamp": 3, ', ""), 3, True),
    ("jsonl", "non-numeric rating"): ("interactions.jsonl", lambda t: t.replace('"rating": 5', '"rating": "good"'), 1,
                                      True),
    ("jsonl", "unknown item"): ("interactions.jsonl", lambda t: t.replace(', "title": "Beta"', ""), 2, True),
    ("jsonl", "empty file"): ("interactions.jsonl", lambda t: "", 1, False),
    ("jsonl", "wrong encoding"): ("items.jsonl", lambda t: t.encode().replace(b"Alpha", b"Alph\xc3"), 1, True),
    ("csv", "malformed line"): ("interactions.csv", lambda t: replace_line(t, 3, 'u1,"B,2,2'), 3, True),
    ("csv", "missing column"): ("interactions.csv", lambda t: t.replace("timestamp,", ""), 1, False),
    ("csv", "non-numeric rating"): ("interactions.csv", lambda t: t.replace("u1,B,2,2", "u1,B,2,two"), 3, True),
    ("csv", "unknown item"): ("interactions.csv", lambda t: t.replace("u2,A", "u2,Z"), 4, True),
    ("csv", "empty file"): ("items.csv", lambda t: "", 1, False),
    ("csv", "wrong encoding"): ("items.csv", lambda t: t.encode("utf-16"), 1, False),
}


def write(folder: Path, fixture: str, case: str | None = None) -> tuple[Path, str | None]:
    """Write a good fixture, or one with a case's defect; return (data path, expected "file:line")."""
    folder.mkdir(parents=True, exist_ok=True)
    where = None
    for name, text in GOOD[fixture].items():
        content: str | bytes = text
        if case and CASES[(fixture, case)][0] == name:
            _, transform, line, _ = CASES[(fixture, case)]
            content = transform(text)
            assert content != text, (fixture, case)
            where = f"{folder / name}:{line}"
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return (folder / next(iter(GOOD[fixture])) if fixture.startswith("alpaca") else folder), where


@pytest.mark.parametrize("fixture", list(GOOD))
def test_good_fixture_loads_and_is_detected(tmp_path, fixture):
    path, _ = write(tmp_path / "d", fixture)
    data = load_data("news", path)
    assert data.stats["format"] == FORMAT.get(fixture, fixture)
    assert data.stats["bad_rows_skipped"] == 0


@pytest.mark.parametrize("fixture,case", list(CASES))
def test_bad_input_names_file_and_line(tmp_path, capsys, fixture, case):
    path, where = write(tmp_path / "d", fixture, case)
    fmt = FORMAT.get(fixture, fixture)
    with pytest.raises(UserError) as err:
        load_data("news", path, fmt=fmt)
    assert err.value.where == where, str(err.value)
    assert len(str(err.value).splitlines()) == 1
    skippable = CASES[(fixture, case)][3]
    if not skippable:  # whole-file problems stop the load whatever --on-bad-rows says
        with pytest.raises(UserError):
            load_data("news", path, fmt=fmt, on_bad_rows="skip")
        return
    capsys.readouterr()
    data = load_data("news", path, fmt=fmt, on_bad_rows="skip")
    assert data.stats["bad_rows_skipped"] >= 1
    assert f"skipped {data.stats['bad_rows_skipped']} bad row(s); the first: {where}" in capsys.readouterr().err


@pytest.mark.parametrize("fixture,case", list(CASES))
def test_bad_input_through_the_cli_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, fixture, case):
    from recpeft.cli.app import main

    path, where = write(tmp_path / "in", fixture, case)
    run_dir, cache_dir = tmp_path / "run", Path(os.environ["RECPEFT_DATA_CACHE"])
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    monkeypatch.setattr(sys, "argv", ["recpeft", "train", "--dry-run", "--data", str(path), "--model", "nowhere",
                                      "--format", FORMAT.get(fixture, fixture)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"recpeft: error: {where}: "), err
    assert not any(run_dir.iterdir()) and not any(cache_dir.iterdir())


def test_bad_input_through_the_real_entry_point(tmp_path):
    path, where = write(tmp_path / "in", "movielens", "unknown item")
    env = {**os.environ, "RECPEFT_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "recpeft", "train", "--dry-run", "--data", str(path)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"recpeft: error: {where}: movie id '99' is not in u.item"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_instruction_data_is_refused_clearly_by_an_interaction_task(tmp_path, monkeypatch, capsys):
    from recpeft.cli.app import main

    path, _ = write(tmp_path / "in", "alpaca")  # it trains as --task instruction (tests/test_instruction.py)
    monkeypatch.setattr(sys, "argv", ["recpeft", "train", "--dry-run", "--data", str(path), "--model", "nowhere",
                                      "--task", "rating"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "is instruction data (alpaca)" in capsys.readouterr().err
