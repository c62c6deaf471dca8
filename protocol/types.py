"""Nested wire structs shared by several messages: tensor and model specs, devices, partitions.

Imports nothing of ours beyond ``protocol``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NewType

from protocol.schema import struct

AgentId = NewType("AgentId", str)
WorkerId = NewType("WorkerId", str)
GatewayId = NewType("GatewayId", str)
VariantName = NewType("VariantName", str)



class WorkerState(enum.StrEnum):
    """Where a worker process is in its life, as the controller knows it."""

    STARTING = "starting"  # asked to start; loading and warming up
    READY = "ready"  # serving
    RESTARTING = "restarting"  # exited; its agent starts it again
    CRASHED = "crashed"  # exited, not to be restarted: past its restart limit, or it could load nothing
    LOST = "lost"  # its agent fell silent
    DRAINING = "draining"  # finishing what it has, taking nothing new (a re-plan retires it)
    STOPPING = "stopping"  # asked to stop
    STOPPED = "stopped"


class ReplyStatus(enum.StrEnum):
    """How a worker answered one inference request."""

    OK = "ok"  # outputs follow
    LATE = "late"  # dropped unrun: it could no longer finish before its deadline
    ERROR = "error"  # the model raised, or the request named a variant or inputs the worker lacks
    OVERLOADED = "overloaded"  # the variant's queue on this worker is full


# Open Inference Protocol datatypes that travel as fixed-size raw tensors, with numpy dtypes.
DATATYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


# Runtimes a manifest's ``backend`` may name, with the KServe V2 ``platform`` each reports.
BACKENDS: dict[str, str] = {
    "torchscript": "pytorch_torchscript",
    "onnx": "onnxruntime_onnx",
    "torch_export": "pytorch_torch_export",
    "openvino": "openvino",  # an ONNX artifact, compiled by OpenVINO Runtime for the CPU
}

# Arithmetic a manifest's ``precision`` lets the runtime use: "fp32" keeps the artifact's own;
# "bf16" lets OpenVINO compute in bfloat16 where the CPU has it (AMX, AVX-512 BF16), fp32 elsewhere.
PRECISIONS = ("fp32", "bf16")


def serves_precision(backend: str, precision: str) -> bool:
    """May ``backend`` compute a variant at ``precision`` (one of PRECISIONS)? fp32 any, bf16 OpenVINO."""
    return precision == "fp32" or backend == "openvino"


@struct
class TensorSpec:
    """A model input or output: name, OIP datatype, shape with -1 for a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def batched(self) -> bool:
        """Is its first dimension the batch (-1: requests stack along it)?"""
        return len(self.shape) > 0 and self.shape[0] == -1


def stackable(inputs: tuple[TensorSpec, ...]) -> bool:
    """May requests with these inputs run stacked in one batch? Only when every input has a batch
    dimension: stacked along any other, a model would see a different input than each request's
    (a softmax over the concatenated vector answers neither)."""
    return len(inputs) > 0 and all(s.batched for s in inputs)


def request_rows(inputs: tuple[TensorSpec, ...], shapes: list[tuple[int, ...]]) -> int:
    """The rows (samples) a request brings to a batch, ``shapes`` its arrays' in the order of
    ``inputs``: the batch dimension of its first batched input, 1 when none has one."""
    for spec, shape in zip(inputs, shapes):
        if spec.batched and len(shape) > 0:
            return max(int(shape[0]), 1)
    return 1


@struct
class TensorMeta:
    """A tensor travelling in the raw frame at the same position in the message's tensor list."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@struct
class VariantSpec:
    """What a worker needs to serve one model variant."""

    name: str
    family: str
    sha256: str
    size_bytes: int
    backend: str = "torchscript"
    max_batch: int = 1
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: str = "edf"  # the worker's batching policy: "edf" | "proteus" | "aimd" | "nexus"
    precision: str = "fp32"  # one of PRECISIONS

    @property
    def served_as(self) -> str:
        """How a worker computes it, past the artifact: its runtime and arithmetic ("openvino/bf16")."""
        return f"{self.backend}/{self.precision}"


@struct
class ModelInfo:
    """A variant as the gateway sees it in the routing table."""

    name: str
    family: str
    accuracy: float
    max_batch: int
    default_slo_ms: float
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version: str = "1"
    platform: str = "pytorch_torchscript"
    energy_j: float = 0.0


@struct
class DeviceInfo:
    """One device an agent offers: a CPU (cores) or a CUDA GPU (MPS percentages)."""

    device_id: str
    kind: str  # "cpu" | "cuda"
    name: str
    cores: int
    memory_bytes: int
    sm_count: int = 0
    mps: bool = False


@struct
class Partition:
    """A gpu-let: a core set on a CPU, or an MPS active-thread percentage on a CUDA GPU."""

    device_id: str
    kind: str
    cores: tuple[int, ...] = ()
    mps_percent: int = 0


@struct
class WorkerRoute:
    """A ready worker and the variants it serves, with the plan's routing weights.

    ``latency_ms`` holds, per variant, the worker's measured latency of batches 1, 2, 4, ... up to
    its max batch (``mesh.latency.warmup_batches``).
    ``weights`` holds, per variant, the share of that variant's requests the plan sends to this
    worker; a variant absent from it takes ``weight`` (equal shares when every worker has 1.0).
    """

    worker_id: str
    variants: tuple[str, ...]
    weight: float = 1.0
    latency_ms: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    # A draining worker takes no new requests but still answers those it has (make-before-break).
    draining: bool = False
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # The agent running it: on a mesh with keys, only that agent's key may speak as this worker.
    agent_id: str = ""
    # Per variant, the largest batch the worker runs when the plan chose one below the model's
    # (``latency_ms`` then holds the warm-up sizes up to it); absent: the model's max_batch.
    max_batch: dict[str, int] = dataclasses.field(default_factory=dict)


@struct
class ProfileSample:
    """Measured latency of one (variant, partition size, batch) on a device kind."""

    variant: str
    device_kind: str
    partition: int  # CPU: cores; CUDA: MPS percentage
    batch: int
    p50_ms: float
    p99_ms: float
    runs: int


@struct
class ColocationSample:
    """Latency of ``variant`` on its partition while ``other`` ran on the rest of the device."""

    device_kind: str
    variant: str
    partition: int
    batch: int
    other: str
    other_partition: int
    other_batch: int
    solo_p50_ms: float
    shared_p50_ms: float


@struct
class CandidateInfo:
    """One action the bandit could take for a request, with the features it was judged on."""

    variant: str
    accuracy: float
    predicted_latency_ms: float
    p_deadline: float
    energy_j: float


@struct
class DecisionRecord:
    """A logged variant choice joined with its reward (explicit feedback or the implicit one)."""

    event_id: str
    family: str
    context: dict[str, str | int | float | bool]
    budget_ms: float
    load: float
    candidates: tuple[CandidateInfo, ...]
    chosen: int
    probability: float
    reward: float
    source: str  # feedback | implicit
    met: bool = True


@struct
class WorkerStatus:
    worker_id: str
    agent_id: str
    state: WorkerState
    partition: Partition
    variants: tuple[str, ...]
    pid: int = 0
    restarts: int = 0
    # Per variant, compute time lately / the worker's warm-up latency (see WorkerReady).
    slowdown: dict[str, float] = dataclasses.field(default_factory=dict)
    runtimes: dict[str, str] = dataclasses.field(default_factory=dict)  # as WorkerReady says
    memory_peak_bytes: int = 0  # as WorkerReady says (CPU devices; 0: not known)


@struct
class RunningWorker:
    """A worker process an agent runs, as it reports it when it registers (with the public key
    of the credential it issued to it, on a mesh with keys)."""

    worker_id: str
    variants: tuple[str, ...]
    pid: int = 0
    public_key: str = ""
    # The sha256 of the artifact it serves for each of ``variants``, in their order (empty from an
    # agent that does not say): a worker running a replaced artifact is restarted on the new one.
    artifacts: tuple[str, ...] = ()
    # VariantSpec.served_as of each of ``variants`` (empty from an agent that does not say): one
    # artifact served by another backend or precision than the repository's now is restarted too.
    served_as: tuple[str, ...] = ()


@struct
class AgentStatus:
    agent_id: str
    hostname: str
    alive: bool
    devices: tuple[DeviceInfo, ...]
    last_seen_s: float
    # A lost agent (and its workers) is forgotten this many seconds from now; 0 while alive.
    forget_in_s: float = 0.0
    # Registrations that changed something (the first, and one per return or restart): repeats
    # of one registration do not count.
    joins: int = 0


@struct
class ModelStatus:
    name: str
    family: str
    accuracy: float
    state: str  # READY | UNAVAILABLE
    workers: tuple[str, ...]
    reason: str = ""  # why UNAVAILABLE: not placed by the current plan, or its workers not ready yet
    placed: bool = False  # the current plan runs it on some worker (ready or not)


@struct
class ReplanRecord:
    """One re-plan the controller began: why, how the workers moved, and at what accuracy.

    ``ago_s`` is counted back from the reply that carries it, so no two hosts need agreeing clocks.
    """

    ago_s: float
    reason: str  # initial | forced | loss | rise | drift | superseded
    policy: str
    kept: int
    started: int
    retired: int
    scaled: bool = False  # accuracy scaling: cheaper variants carry part of the demand
    effective_accuracy: float = 0.0  # when scaled: the rate-weighted accuracy of the requests served
    shed: dict[str, float] = dataclasses.field(default_factory=dict)  # when scaled: req/s turned away, per family
    finished: bool = False  # the move to the new layout is complete
