"""What an agent's registration says of the workers it runs: enough for a controller that restarted
to tell a worker serving its variants as the repository says from one to start again."""

from __future__ import annotations

from agents.config import AgentConfig
from agents.managed_worker import ManagedWorker
from agents.worker_fleet import WorkerFleet
from mesh.clock import SystemClock
from mesh.supervisor import RestartIntensity
from protocol.message import StartWorker
from protocol.types import Partition, VariantSpec


def spec(name: str, **fields) -> VariantSpec:
    return VariantSpec(name=name, family="f", sha256=name[0] * 64, size_bytes=1, **fields)


async def test_each_running_worker_is_reported_with_its_artifacts_backend_and_precision(tmp_path) -> None:
    async def send(_msg: object) -> None:
        pass

    fleet = WorkerFleet(AgentConfig(controller="tcp://127.0.0.1:1", agent_id="a1", state_dir=str(tmp_path)),
                        SystemClock(), send=send, tell=lambda _msg: None, background=lambda coro, _name: coro)
    cpu = Partition(device_id="cpu0", kind="cpu", cores=(0,))
    variants = (spec("a-exact", backend="openvino"), spec("b-fast", backend="openvino", precision="bf16"),
                spec("c-plain"))
    fleet.workers["a1.w0"] = ManagedWorker(cmd=StartWorker(worker_id="a1.w0", partition=cpu, variants=variants,
                                                           gateways=(), controller=""),
                                           intensity=RestartIntensity(3, 60.0))
    fleet.workers["a1.w1"] = ManagedWorker(cmd=StartWorker(worker_id="a1.w1", partition=cpu, variants=variants[:1],
                                                           gateways=(), controller=""),
                                           intensity=RestartIntensity(3, 60.0), stopping=True)

    (report,) = fleet.running()  # not the one it is stopping

    assert report.worker_id == "a1.w0" and report.variants == ("a-exact", "b-fast", "c-plain")
    assert report.artifacts == ("a" * 64, "b" * 64, "c" * 64)
    assert report.served_as == ("openvino/fp32", "openvino/bf16", "torchscript/fp32")
