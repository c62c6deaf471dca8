"""Workers' own credentials: let in only as the agent that runs the worker reports them, for as
long as that worker process is in the plan and its agent is authorised."""

from __future__ import annotations

import zmq

from controller.credentials import WorkerCredentials, valid_key
from controller.placement import PlannedWorker
from controller.registry import Registry
from mesh.keys import AuthorizedKeys
from protocol.types import DeviceInfo, Partition, WorkerState
from tests.controller.test_registry import variant

CPU = (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=2, memory_bytes=1 << 30),)


def key() -> str:
    return zmq.curve_keypair()[0].decode()


def setup() -> tuple[Registry, AuthorizedKeys, WorkerCredentials]:
    reg = Registry({"small": variant("small")}, heartbeat_interval_s=1.0, missed_heartbeats=2)
    for agent in ("e1", "e2"):
        reg.agent_registered(agent, agent, CPU, 0.0, instance=agent)
    reg.plan_worker(PlannedWorker("w1", "e1", Partition(device_id="cpu0", kind="cpu", cores=(0,)), ("small",)))
    authorized = AuthorizedKeys({key(): "agent:e1", key(): "agent:e2"})
    return reg, authorized, WorkerCredentials(authorized)


def test_only_the_agent_running_the_worker_can_have_its_key_let_in() -> None:
    reg, authorized, creds = setup()
    k = key()
    assert not creds.reported(reg, "e2", "w1", k), "e2 does not run w1"
    assert not creds.reported(reg, "e1", "unknown", k), "not a worker of the plan"
    assert not creds.reported(reg, "e1", "w1", "not-a-key")
    assert authorized.name_of(k) is None
    assert creds.reported(reg, "e1", "w1", k)
    assert authorized.name_of(k) == "worker:w1" and authorized.allowed("worker:w1")
    assert creds.by_worker() == {"w1": k}


def test_a_key_serves_one_worker_only() -> None:
    reg, authorized, creds = setup()
    reg.plan_worker(PlannedWorker("w2", "e1", Partition(device_id="cpu0", kind="cpu", cores=(1,)), ("small",)))
    k = key()
    assert creds.reported(reg, "e1", "w1", k)
    assert not creds.reported(reg, "e1", "w2", k)
    assert authorized.name_of(k) == "worker:w1"


def test_a_restart_replaces_the_key_and_the_old_one_is_refused() -> None:
    reg, authorized, creds = setup()
    old, new = key(), key()
    creds.reported(reg, "e1", "w1", old)
    assert creds.reported(reg, "e1", "w1", new)
    assert authorized.name_of(old) is None and authorized.name_of(new) == "worker:w1"


def test_credentials_end_with_the_worker_and_with_their_agents_key() -> None:
    reg, authorized, creds = setup()
    k = key()
    creds.reported(reg, "e1", "w1", k)
    assert not creds.sync(reg), "ready or starting: kept"
    reg.worker_down("w1", WorkerState.STOPPED)
    assert creds.sync(reg)
    assert authorized.name_of(k) is None
    reg.worker_started("w1", 7)
    creds.reported(reg, "e1", "w1", k)
    listed = {kk: n for kk, n in ((key(), "agent:e2"),)}  # the keyring is re-read without e1: revoked
    authorized.replace(listed)
    assert authorized.allowed("worker:w1"), "a new list leaves issued credentials alone..."
    assert creds.sync(reg)
    assert not authorized.allowed("worker:w1"), "...until the sync sees their agent is gone"


def test_valid_key() -> None:
    assert valid_key(key())
    assert not valid_key("")
    assert not valid_key("x" * 40 + "y")


def test_a_restarted_controller_lets_back_in_the_saved_credentials_of_its_restored_plan(tmp_path) -> None:
    from controller.store import StateStore

    reg, authorized, creds = setup()
    k = key()
    creds.reported(reg, "e1", "w1", k)
    store = StateStore(tmp_path / "state.db")
    store.save_credentials({**creds.by_worker(), "gone": key()})
    store.close()
    # the next process: the plan restored from the store, the keyring read afresh
    reg2, authorized2, creds2 = setup()
    store = StateStore(tmp_path / "state.db")
    creds2.restore(reg2, store.credentials())
    store.close()
    assert authorized2.name_of(k) == "worker:w1"
    assert set(creds2.by_worker()) == {"w1"}, "only workers of the restored plan"
