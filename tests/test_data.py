import subprocess
import sys
from collections import defaultdict

import pytest

from recpeft.data.formats.csvdir import SAMPLE_ROOT, load_csv_dir, load_sample
from recpeft.domains import DOMAINS
from recpeft.errors import UserError
from recpeft.tasks.examples import preference_examples


def test_sample_generation_is_deterministic_and_matches_committed_files(tmp_path):
    subprocess.run([sys.executable, "-m", "recpeft.data.make_samples", "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for domain in DOMAINS:
        for name in ("items.csv", "interactions.csv", "features.npz"):
            assert (tmp_path / domain / name).read_bytes() == (SAMPLE_ROOT / domain / name).read_bytes(), (domain, name)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_samples_are_big_enough_and_text_rich(domain):
    data = load_sample(domain)
    users = {x.user_id for x in data.interactions}
    assert len(users) >= 200 and len(data.items) >= 200 and len(data.interactions) >= 5000
    assert all(i.title and i.category for i in data.items.values())
    rate = sum(x.liked for x in data.interactions) / len(data.interactions)
    assert 0.35 < rate < 0.65


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_temporal_split_never_looks_into_the_future(domain):
    splits = preference_examples(load_sample(domain))
    last_train, first_eval = defaultdict(lambda: -1), defaultdict(lambda: 10**12)
    for ex in splits["train"]:
        last_train[ex.user_id] = max(last_train[ex.user_id], ex.timestamp)
    for split in ("valid", "test"):
        for ex in splits[split]:
            first_eval[ex.user_id] = min(first_eval[ex.user_id], ex.timestamp)
    assert all(first_eval[u] >= last_train[u] for u in first_eval)
    for split in splits.values():
        for ex in split:
            assert all(h.timestamp <= ex.timestamp and h.user_id == ex.user_id for h in ex.history)
            assert ex.target not in ex.history
    assert len(splits["valid"]) >= 200 and len(splits["test"]) >= 200


def test_bad_rows_name_file_and_line(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,category\nA,Alpha,X\nB,Beta,Y\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp,rating\nu1,A,1,5\nu1,B,2,seven\n")
    with pytest.raises(UserError) as err:
        load_csv_dir(tmp_path)
    assert err.value.where == f"{tmp_path / 'interactions.csv'}:3"
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp,rating\nu1,Z,1,5\n")
    with pytest.raises(UserError, match="unknown item_id 'Z'"):
        load_csv_dir(tmp_path)
