"""What prompt lookup copies: the longest suffix seen before, its latest occurrence."""

from __future__ import annotations

from exo_spec.engine.prompt_lookup import PromptLookup


def test_the_longest_suffix_at_its_latest_earlier_occurrence_is_copied():
    lookup = PromptLookup()
    lookup.extend([1, 2, 3, 9, 2, 3, 7, 5, 2, 3])
    # [2, 3] last occurred before the newest suffix at 4..5, followed by 7, 5, 2, 3
    assert lookup.match() == (2, 6)
    assert lookup.draft(3) == [7, 5, 2]
    lookup.extend([7])  # now [2, 3, 7] matches in full (positions 4..6)
    assert lookup.match() == (3, 7)
    assert lookup.draft(2) == [5, 2]


def test_a_copy_reaching_the_newest_token_goes_on_copying_itself():
    lookup = PromptLookup()
    lookup.extend([4, 8, 4, 8, 4])
    assert lookup.draft(5) == [8, 4, 8, 4, 8]


def test_no_match_drafts_nothing_and_beside_a_model_only_full_matches_count():
    lookup = PromptLookup()
    lookup.extend([1, 2, 3])
    assert lookup.match() == (0, 0) and lookup.draft(4) == []
    lookup.extend([5, 6, 3])  # [3] seen before, [6, 3] not
    assert lookup.draft(2) == [5, 6]
    assert lookup.draft(2, beside_model=True) == []
    lookup.extend([5, 6])  # [3, 5, 6] seen before
    assert lookup.draft(2, beside_model=True) == [3, 5]
