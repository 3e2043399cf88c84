"""with_item_stats: like-rates from training events only, so no validation or test label leaks."""

import dataclasses

from recpeft.data.schema import Interaction, Item, RecData
from recpeft.tasks.examples import preference_examples, with_item_stats


def _data(flip_last: bool = False) -> RecData:
    items = {i: Item(i, f"Title {i}") for i in ("a", "b", "c")}
    rows = []
    for u in range(6):
        for t in range(8):  # per user: 4 training events, then 2 valid, 2 test
            item = "abc"[t % 3]
            rating = 5.0 if item == "a" else 1.0
            if flip_last and t >= 4:
                rating = 6.0 - rating
            rows.append(Interaction(f"u{u}", item, 1000 * u + t, rating))
    return RecData("toy", items, rows)


def test_tags_are_training_like_rates():
    tagged = with_item_stats(_data())
    assert tagged.items["a"].title == "Title a [100% liked]"
    assert tagged.items["b"].title == "Title b [0% liked]"
    assert tagged.items["a"].categories == _data().items["a"].categories


def test_validation_and_test_labels_do_not_change_the_tags():
    plain, flipped = with_item_stats(_data()), with_item_stats(_data(flip_last=True))
    assert {k: v.title for k, v in plain.items.items()} == {k: v.title for k, v in flipped.items.items()}
    # ... while the labels the model is scored on really did change
    labels = [e.label for e in preference_examples(_data())["test"]]
    assert labels != [e.label for e in preference_examples(_data(flip_last=True))["test"]]


def test_rare_items_get_no_tag():
    data = _data()
    data = dataclasses.replace(data, items={**data.items, "d": Item("d", "Title d")},
                               interactions=data.interactions + [Interaction("u0", "d", 1, 5.0)])
    assert with_item_stats(data).items["d"].title == "Title d"
