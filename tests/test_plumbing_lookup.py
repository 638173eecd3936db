"""The one look-up of names: the entry, or one error line naming the kind, the name, the closest and the known."""

from __future__ import annotations

import pytest

from plumbing.errors import UserError
from plumbing.lookup import look_up, unknown_name

TABLE = {"chexpert": 1, "chestxray8": 2, "phantom": 3, "phantom-nih": 4}


def test_a_known_name_gives_its_entry_and_a_sequence_gives_the_name() -> None:
    assert look_up("data set", "phantom-nih", TABLE) == 4
    assert look_up("alignment", "dcan", ("none", "dcan", "ours")) == "dcan"


def test_a_misspelt_name_is_one_line_with_the_closest_and_every_known_name_in_table_order() -> None:
    with pytest.raises(UserError) as exc:
        look_up("data set", "chexpret", TABLE)
    assert str(exc.value) == (
        "unknown data set 'chexpret'; did you mean 'chexpert'? (known: chexpert, chestxray8, phantom, phantom-nih)"
    )


def test_no_suggestion_when_nothing_is_close_and_case_alone_is_suggested() -> None:
    assert unknown_name("backbone", "vit", ["resnet18", "tiny"]) == "unknown backbone 'vit' (known: resnet18, tiny)"
    assert "did you mean 'phantom'?" in unknown_name("data set", "Phantom", TABLE)


def test_the_option_leads_the_line_and_any_value_that_is_not_a_name_is_refused() -> None:
    with pytest.raises(UserError, match=r"^--tasks: unknown pretext task 'jigsaw' \(known: moco, rotation\)$"):
        look_up("pretext task", "jigsaw", ["moco", "rotation"], option="--tasks")
    for bad in (None, 3, ["moco"]):
        with pytest.raises(UserError, match="unknown pretext task"):
            look_up("pretext task", bad, ["moco"])
    assert unknown_name("preset", "x", []) == "unknown preset 'x' (known: none)"
