"""Which connection holds a peer name, driven by a fake clock and a scripted liveness answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.clock import FakeClock
from mesh.peer_routes import TAG_BYTES, PeerRoutes, name_of, owns, tagged


class Holders:
    """The liveness answer a test scripts: which routing identities are still connected."""

    def __init__(self, *alive: bytes) -> None:
        self.alive = set(alive)
        self.asked: list[bytes] = []

    def __call__(self, routing_id: bytes) -> bool:
        self.asked.append(routing_id)
        return routing_id in self.alive


def test_a_tag_is_fresh_per_socket_and_stripped_back_to_the_name() -> None:
    a, b = tagged("agent:e1"), tagged("agent:e1")
    assert a != b and len(a) == len(b"agent:e1") + TAG_BYTES
    assert name_of(a) == name_of(b) == b"agent:e1"
    assert name_of(b"agent:e1") == b"agent:e1"  # an untagged identity is its own name
    assert name_of(b"\x00\x01\x02\x03\x04") == b"\x00\x01\x02\x03\x04"  # libzmq's generated identities


def test_the_first_connection_keeps_its_name_while_it_is_connected() -> None:
    clock, routes = FakeClock(), PeerRoutes()
    first, second = tagged("worker:w1"), tagged("worker:w1")
    holders = Holders(first, second)
    assert routes.heard(first, clock.monotonic(), holders) == b"worker:w1"
    assert routes.heard(second, clock.monotonic(), holders) is None
    assert holders.asked == [first]
    assert routes.route(b"worker:w1") == first
    assert routes.heard(first, clock.monotonic(), holders) == b"worker:w1"
    assert routes.dropped == 1 and routes.taken_over == 0


def test_a_newcomer_takes_the_name_once_its_holder_is_gone() -> None:
    clock, routes = FakeClock(), PeerRoutes()
    old, new = tagged("agent:e1"), tagged("agent:e1")
    holders = Holders(old, new)
    routes.heard(old, clock.monotonic(), holders)
    assert routes.heard(new, clock.monotonic(), holders) is None
    holders.alive.discard(old)  # the old process exited: its connection closed
    clock.advance(0.1)
    assert routes.heard(new, clock.monotonic(), holders) == b"agent:e1"
    assert routes.route(b"agent:e1") == new
    assert routes.taken_over == 1
    # The old connection's late messages are now the ones dropped.
    holders.asked.clear()
    clock.advance(0.1)
    assert routes.heard(old, clock.monotonic(), holders) is None
    assert holders.asked == [new]


def test_the_holder_is_asked_at_most_once_per_interval_however_fast_a_newcomer_sends() -> None:
    clock, routes = FakeClock(), PeerRoutes(probe_every_s=0.1)
    holder, flood = tagged("gateway:g"), tagged("gateway:g")
    holders = Holders(holder, flood)
    routes.heard(holder, clock.monotonic(), holders)
    for _ in range(1000):
        assert routes.heard(flood, clock.monotonic(), holders) is None
        clock.advance(0.001)
    assert len(holders.asked) == 10
    assert routes.dropped == 1000


def test_names_are_kept_up_to_capacity_forgetting_the_least_recently_heard() -> None:
    clock, routes = FakeClock(), PeerRoutes(capacity=3)
    ids = [tagged(f"worker:w{i}") for i in range(4)]
    holders = Holders(*ids)
    for rid in ids[:3]:
        routes.heard(rid, clock.monotonic(), holders)
    routes.heard(ids[0], clock.monotonic(), holders)  # heard again: the most recent now
    routes.heard(ids[3], clock.monotonic(), holders)
    assert len(routes) == 3
    assert routes.route(b"worker:w1") == b"worker:w1"  # forgotten: a send goes to the bare name
    assert routes.route(b"worker:w0") == ids[0]


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2), st.booleans()), max_size=300))
def test_names_held_never_exceed_capacity_and_each_name_has_one_holder(events) -> None:
    clock, routes = FakeClock(), PeerRoutes(capacity=8, probe_every_s=0.05)
    sockets = [[tagged(f"p:{n}") for _ in range(3)] for n in range(41)]
    connected = {rid for row in sockets for rid in row}
    for name, which, closes in events:
        rid = sockets[name][which]
        got = routes.heard(rid, clock.monotonic(), lambda r: r in connected)
        assert got in (None, f"p:{name}".encode())
        if got is not None:
            assert routes.route(got) == rid
        if closes:
            connected.discard(routes.route(f"p:{name}".encode()))
        clock.advance(0.02)
        assert len(routes) <= 8


def test_a_connection_under_its_own_keys_name_takes_it_from_a_squatter_at_once() -> None:
    clock, routes = FakeClock(), PeerRoutes()
    squatter, owner = tagged("agent:e1"), tagged("agent:e1")
    holders = Holders(squatter, owner)
    assert routes.heard(squatter, clock.monotonic(), holders) == b"agent:e1"  # another key, while e1 was away
    assert routes.heard(owner, clock.monotonic(), holders, rightful=True) == b"agent:e1"
    assert holders.asked == []  # no need to ask: the squatter never had a claim
    assert routes.route(b"agent:e1") == owner
    assert routes.heard(squatter, clock.monotonic(), holders) is None
    # The owner, once it holds the name, keeps it against another connection with its key.
    clock.advance(1.0)
    again = tagged("agent:e1")
    holders.alive.add(again)
    assert routes.heard(again, clock.monotonic(), holders, rightful=True) is None
    assert routes.route(b"agent:e1") == owner


def test_who_may_hold_a_name() -> None:
    assert owns("agent:e1", tagged("agent:e1")) and owns("worker:a1.w0", b"worker:a1.w0")
    assert owns("agent:e1", tagged("profiler:e1:7.1")) and not owns("agent:e10", tagged("profiler:e1:7.1"))
    assert not owns("agent:e1", tagged("profiler:e10:7.1")) and not owns("gateway:e1", tagged("profiler:e1:7.1"))
    assert owns("operator:local", tagged("cli:abc")) and not owns("agent:e1", tagged("cli:abc"))
    assert not owns(None, tagged("agent:e1")) and not owns("agent:e2", tagged("agent:e1"))
