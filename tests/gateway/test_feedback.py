"""Feedback bodies map onto a reward in [0, 1], or a clear error."""

from __future__ import annotations

import pytest

from gateway.feedback import BadFeedback, reward_of


@pytest.mark.parametrize("body, reward", [
    ({"event_id": "e", "reward": 0.25}, 0.25),
    ({"event_id": "e", "reward": 1}, 1.0),
    ({"event_id": "e", "rating": 4, "scale": 5}, 0.8),
    ({"event_id": "e", "rating": 3}, 0.6),
    ({"event_id": "e", "satisfied": True}, 1.0),
    ({"event_id": "e", "satisfied": False}, 0.0),
])
def test_reward_forms(body, reward) -> None:
    assert reward_of(body) == ("e", pytest.approx(reward))


@pytest.mark.parametrize("body, fragment", [
    ([], "object"),
    ({"reward": 1}, "event_id"),
    ({"event_id": "", "reward": 1}, "event_id"),
    ({"event_id": "e"}, "reward"),
    ({"event_id": "e", "reward": 1.5}, "[0, 1]"),
    ({"event_id": "e", "reward": -0.1}, "[0, 1]"),
    ({"event_id": "e", "reward": True}, "number"),
    ({"event_id": "e", "reward": "high"}, "number"),
    ({"event_id": "e", "rating": 6, "scale": 5}, "rating"),
    ({"event_id": "e", "rating": 1, "scale": 0}, "scale"),
    ({"event_id": "e", "satisfied": "yes"}, "satisfied"),
    ({"event_id": "e", "reward": 1, "satisfied": False}, "one of 'reward', 'rating' or 'satisfied'"),
    ({"event_id": "e", "rating": 4, "satisfied": True}, "not 'rating' and 'satisfied'"),
    ({"event_id": "e", "reward": 0.5, "scale": 10}, "'scale' goes with 'rating'"),
    # A misspelt 'scale' would leave the default 5 in force: 4 of 10 taken as 0.8, unseen.
    ({"event_id": "e", "rating": 4, "scael": 10}, "unknown key 'scael'; feedback takes event_id, reward"),
    ({"event_id": "e", "reward": 1, "note": "ok", "x": 1}, "unknown keys 'note', 'x'"),
])
def test_malformed_feedback_says_what_is_wrong(body, fragment) -> None:
    with pytest.raises(BadFeedback) as err:
        reward_of(body)
    assert fragment in str(err.value)


@pytest.mark.parametrize("body, fragment", [
    ({"event_id": "e", "reward": 10**309}, "reward"),  # past float: must not reach float()
    ({"event_id": "e", "rating": 10**309}, "rating"),
    ({"event_id": "e", "rating": 1, "scale": 10**309}, "scale"),
    ({"event_id": "e", "rating": float("nan")}, "rating"),
    ({"event_id": "e", "rating": 1, "scale": float("inf")}, "scale"),
    ({"event_id": "e" * 129, "reward": 1}, "event_id"),
])
def test_numbers_past_their_range_are_refused(body, fragment) -> None:
    with pytest.raises(BadFeedback) as err:
        reward_of(body)
    assert fragment in str(err.value)
