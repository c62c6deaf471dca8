"""Liveness from heartbeats, driven by a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.clock import FakeClock
from mesh.liveness import Liveness


def test_new_peer_is_reported_as_joined_once() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=3)
    assert table.beat("agent-a", clock.monotonic()) is True
    clock.advance(1.0)
    assert table.beat("agent-a", clock.monotonic()) is False
    assert table.peers() == ["agent-a"]
    assert table.last_seen("agent-a") == clock.monotonic()
    assert table.last_seen("nobody") is None


@pytest.mark.parametrize(
    ("silence_s", "alive", "lost"),
    [
        (0.0, True, []),
        (2.9, True, []),
        (3.0, True, []),  # exactly the limit: not yet lost
        (3.01, False, ["w"]),
        (30.0, False, ["w"]),
    ],
)
def test_lost_after_missed_limit_intervals(silence_s: float, alive: bool, lost: list[str]) -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=3)
    table.beat("w", clock.monotonic())
    clock.advance(silence_s)
    assert table.alive("w", clock.monotonic()) is alive
    assert table.lost(clock.monotonic()) == lost


def test_lost_is_reported_once_then_peer_comes_back() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=0.5, missed_limit=2)
    table.beat("a", clock.monotonic())
    table.beat("b", clock.monotonic())
    clock.advance(0.75)
    table.beat("b", clock.monotonic())
    clock.advance(0.5)  # a silent for 1.25 s > 1.0 s; b for 0.5 s
    assert table.lost(clock.monotonic()) == ["a"]
    assert table.lost(clock.monotonic()) == []
    clock.advance(10.0)
    assert table.lost(clock.monotonic()) == ["b"]
    assert not table.alive("a", clock.monotonic())

    assert table.beat("a", clock.monotonic()) is True  # came back
    assert table.alive("a", clock.monotonic())
    assert table.beat("a", clock.monotonic()) is False
    clock.advance(1.5)
    assert table.lost(clock.monotonic()) == ["a"]  # and can be lost again


def test_lost_lists_oldest_heartbeat_first() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=1)
    for peer in ("c", "a", "b"):
        table.beat(peer, clock.monotonic())
        clock.advance(0.1)
    table.beat("a", clock.monotonic())  # a is now the freshest
    clock.advance(5.0)
    assert table.lost(clock.monotonic()) == ["c", "b", "a"]


def test_late_beat_before_loss_was_reported_is_not_a_rejoin() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=3)
    table.beat("w", clock.monotonic())
    clock.advance(5.0)
    assert not table.alive("w", clock.monotonic())
    # Nobody was told it was lost, so nobody needs to be told it is back.
    assert table.beat("w", clock.monotonic()) is False
    assert table.lost(clock.monotonic()) == []


def test_out_of_order_beat_does_not_move_last_seen_back() -> None:
    table = Liveness(interval_s=1.0)
    table.beat("w", 100.0)
    table.beat("w", 95.0)
    assert table.last_seen("w") == 100.0
    assert table.alive("w", 102.5)


def test_forget_removes_a_peer_silently() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0)
    table.beat("gone", clock.monotonic())
    table.forget("gone")
    table.forget("never-seen")
    clock.advance(100.0)
    assert table.lost(clock.monotonic()) == []
    assert table.peers() == []
    assert not table.alive("gone", clock.monotonic())
    assert table.beat("gone", clock.monotonic()) is True


def test_next_deadline_tracks_the_oldest_unreported_peer() -> None:
    table = Liveness(interval_s=2.0, missed_limit=3)
    assert table.next_deadline() is None
    table.beat("a", 10.0)
    table.beat("b", 12.0)
    assert table.next_deadline() == 16.0
    assert table.lost(16.5) == ["a"]
    assert table.next_deadline() == 18.0
    assert table.lost(18.5) == ["b"]
    assert table.next_deadline() is None


def test_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        Liveness(interval_s=0.0)
    with pytest.raises(ValueError):
        Liveness(interval_s=1.0, missed_limit=0)


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.floats(min_value=0.0, max_value=3.0),
            st.booleans(),
        ),
        max_size=80,
    )
)
def test_every_loss_is_reported_once_and_paired_with_a_return(
    events: list[tuple[str, float, bool]],
) -> None:
    """Lost and came-back reports alternate per peer, starting with a join."""
    table = Liveness(interval_s=0.5, missed_limit=2)
    now = 0.0
    history: dict[str, list[str]] = {}
    for peer, gap, poll in events:
        now += gap
        if poll:
            for gone in table.lost(now):
                history.setdefault(gone, []).append("lost")
        elif table.beat(peer, now):
            history.setdefault(peer, []).append("joined")
        for p in table.peers():
            seen = table.last_seen(p)
            assert seen is not None
            if now - seen <= table.timeout_s:
                assert table.alive(p, now) == (history[p][-1] == "joined")
    for peer, reports in history.items():
        assert reports[0] == "joined"
        assert all(x != y for x, y in zip(reports, reports[1:])), (peer, reports)


def test_silence_while_the_observer_stalled_is_excused_and_real_silence_is_not() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=3)
    table.beat("w", clock.monotonic())
    table.beat("gone", clock.monotonic())
    clock.advance(2.0)
    table.beat("gone", clock.monotonic())  # then falls silent for good
    clock.advance(4.0)  # the observer was busy for 4 s: "w"'s heartbeats wait unread
    table.excuse(4.0, clock.monotonic())
    assert table.lost(clock.monotonic()) == []
    table.beat("w", clock.monotonic())  # read once the observer listens again
    clock.advance(2.0)
    table.beat("w", clock.monotonic())
    clock.advance(1.5)
    assert table.lost(clock.monotonic()) == ["gone"]  # silent while the observer listened too


def test_excuse_never_moves_a_peer_past_now_or_revives_a_lost_one() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=2)
    table.beat("w", clock.monotonic())
    table.beat("x", clock.monotonic())
    clock.advance(3.0)
    assert table.lost(clock.monotonic()) == ["w", "x"]
    table.beat("w", clock.monotonic())
    table.excuse(100.0, clock.monotonic())
    assert table.last_seen("w") == clock.monotonic()
    assert table.alive("x", clock.monotonic()) is False  # reported lost: only a heartbeat brings it back
    table.excuse(-5.0, clock.monotonic())  # no stall: nothing changes
    assert table.last_seen("w") == clock.monotonic()


def test_the_table_is_bounded_lost_peers_make_room_and_live_ones_are_kept() -> None:
    live = Liveness(interval_s=1.0, missed_limit=1, max_peers=3)
    for peer in ("a", "b", "c"):
        assert live.beat(peer, 0.0)
    assert not live.beat("intruder", 0.5)  # full of live peers: refused, none pushed out
    assert (live.peers(), live.refused) == (["a", "b", "c"], 1)
    live.beat("b", 1.5)
    live.beat("c", 1.8)
    assert live.lost(2.1) == ["a"]
    assert live.beat("d", 2.2)  # "a" was lost: forgotten to make room
    assert live.peers() == ["b", "c", "d"]
    assert live.beat("a", 2.3) is False and live.refused == 2  # no lost peer left to forget


def test_an_observer_that_looks_before_each_answer_never_sees_a_silent_peer_come_back() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=3)
    table.look(clock.monotonic())
    table.beat("w", clock.monotonic())  # then falls silent for good
    answers = []
    for gap in (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.5, 0.2, 4.0, 0.1):  # looks come late now and then
        clock.advance(gap)
        table.look(clock.monotonic())
        answers.append(table.alive("w", clock.monotonic()))
    first_dead = answers.index(False)
    assert not any(answers[first_dead:]), answers  # once told "not alive", always told so


def test_a_stall_before_the_first_look_after_it_is_still_excused() -> None:
    clock = FakeClock()
    table = Liveness(interval_s=1.0, missed_limit=3)
    table.look(clock.monotonic())
    table.beat("w", clock.monotonic())
    clock.advance(5.0)  # the observer's loop was stalled: "w"'s heartbeats wait unread
    table.look(clock.monotonic())
    assert table.alive("w", clock.monotonic()) and table.lost(clock.monotonic()) == []
    for _ in range(7):  # now it listens, looking every half interval, and "w" stays silent
        clock.advance(0.5)
        table.look(clock.monotonic())
    assert not table.alive("w", clock.monotonic()) and table.lost(clock.monotonic()) == ["w"]
