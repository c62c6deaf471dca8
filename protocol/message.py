"""Every letmesh wire message, each a frozen, slotted, keyword-only dataclass with a unique tag.

Commands are imperative, events past tense, replies end in ``Reply``. Tags 1-99 are the
control plane (agents, gateways, workers <-> controller), 100-199 the data plane
(gateway <-> worker). Imports nothing of ours beyond ``protocol``.
"""

from __future__ import annotations

import dataclasses

from protocol.schema import message
from protocol.types import (
    AgentStatus,
    ColocationSample,
    DecisionRecord,
    DeviceInfo,
    ModelInfo,
    ModelStatus,
    Partition,
    ProfileSample,
    ReplanRecord,
    ReplyStatus,
    RunningWorker,
    TensorMeta,
    VariantSpec,
    WorkerRoute,
    WorkerStatus,
)


@message(1)
class ErrorReply:
    """A failure carried as data. ``code`` is a stable machine-readable condition name."""

    code: str
    message: str
    retryable: bool = False
    request_id: int = 0


@message(2)
class Heartbeat:
    """Sent both ways on every control and data link; ``seq`` grows per sender."""

    sender: str
    role: str
    seq: int = 0


# --- agents ---------------------------------------------------------------------------------


@message(10)
class RegisterAgent:
    """``instance``: random per agent process start, so a repeat of one start's registration is
    told from a restart; ``workers``: what the agent runs now (the controller stops the ones its
    plan does not know)."""

    agent_id: str
    hostname: str
    devices: tuple[DeviceInfo, ...]
    pid: int = 0
    instance: str = ""
    workers: tuple[RunningWorker, ...] = ()


@message(11)
class RegisterAgentReply:
    agent_id: str
    heartbeat_interval_s: float
    controller_epoch: int


@message(12)
class StartWorker:
    worker_id: str
    partition: Partition
    variants: tuple[VariantSpec, ...]
    gateways: tuple[str, ...]
    controller: str


@message(13)
class StopWorker:
    worker_id: str
    drain_s: float = 1.0


@message(14)
class WorkerStarted:
    """The agent spawned the worker's process (it is not serving yet). ``public_key``: the CURVE
    key (z85) of the credential the agent issued to this process, on a mesh with keys."""

    worker_id: str
    agent_id: str
    pid: int
    public_key: str = ""


@message(15)
class WorkerStopped:
    worker_id: str
    agent_id: str
    exit_code: int


@message(16)
class WorkerCrashed:
    worker_id: str
    agent_id: str
    exit_code: int
    restarts: int
    will_restart: bool


# --- workers <-> controller -----------------------------------------------------------------


@message(17)
class DeregisterAgent:
    """Agent -> controller on a clean stop: its workers are gone; forget it now."""

    agent_id: str
    instance: str = ""


@message(20)
class FetchArtifact:
    sha256: str
    offset: int
    length: int


@message(21)
class ArtifactChunkReply:
    sha256: str
    offset: int
    total_size: int
    data: bytes


@message(22)
class WorkerReady:
    """The worker loaded and warmed its variants and is connected to every gateway (repeated as
    its heartbeat). ``slowdown``: per variant, the filtered ratio of the compute time its recent
    batches took to what its warm-up measured, once it has run enough batches to say."""

    worker_id: str
    agent_id: str
    variants: tuple[str, ...]
    pid: int
    # Per variant, the warm-up's latency (ms) at batches 1, 2, 4, ... its max batch, those sizes
    # alone (``mesh.latency.reported``): routing tables carry it to gateways as ``latency_ms``.
    batch_latency_ms: dict[str, tuple[float, ...]]
    slowdown: dict[str, float] = dataclasses.field(default_factory=dict)
    # Per variant the ONNX upgrade decided for: its verdict, naming the runtime that serves it
    # (see agents.onnx_upgrade).
    runtimes: dict[str, str] = dataclasses.field(default_factory=dict)
    # The most host memory of its own the process has held, on a CPU device: its peak resident
    # memory (VmHWM) less the pages of files it maps (shared libraries, which every worker of the
    # host shares, and model files a runtime maps): what its runtime, models and batches took.
    # 0 on a GPU (host memory is not the device's) or where the host cannot tell.
    memory_peak_bytes: int = 0


@message(28)
class VariantLoadFailed:
    """A worker (or its agent) could not fetch or load one of its variants: the controller marks
    the variant unavailable with ``reason`` and re-plans without it, so the healthy variants it
    was placed with are served again. ``reason`` is cut to 512 characters by the sender."""

    worker_id: str
    variant: str
    reason: str


# --- gateways <-> controller ----------------------------------------------------------------


@message(30)
class RegisterGateway:
    gateway_id: str
    data_endpoint: str
    http_url: str


@message(31)
class RegisterGatewayReply:
    gateway_id: str
    heartbeat_interval_s: float
    controller_epoch: int
    # Random per controller start: a gateway that sees it change takes the new controller's table
    # and policies whatever their versions (a controller whose state was lost counts from 1 again).
    controller_instance: str = ""


@message(32)
class RoutingTable:
    """Which ready worker serves which variant. Pushed whenever it changes; ``version`` grows."""

    version: int
    models: tuple[ModelInfo, ...]
    workers: tuple[WorkerRoute, ...]
    # Accuracy scaling: the share of a family's requests each variant may take (absent: no cap),
    # and the share of a family's requests to turn away because the fleet cannot carry them.
    family_fractions: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    shed: dict[str, float] = dataclasses.field(default_factory=dict)
    # Variants of the repository that cannot be served (bad artifact, failed to load): name -> reason.
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)


@message(33)
class GatewayListChanged:
    """Controller -> running workers: the gateways to keep a data connection to."""

    gateways: tuple[str, ...]


@message(37)
class DeregisterGateway:
    """Gateway -> controller on a clean stop: forget it now, and tell workers to drop its link."""

    gateway_id: str


@message(36)
class AuthorizedAgents:
    """Controller -> gateways: the agents authorised now (name -> CURVE public key, z85 text).

    Sent on registration and whenever the keyring or the workers' credentials change; a
    gateway lets in, on its data socket, only workers with their own credential (``workers``:
    worker id -> public key). Empty on a mesh without keys.
    """

    keys: dict[str, str] = dataclasses.field(default_factory=dict)
    workers: dict[str, str] = dataclasses.field(default_factory=dict)


# --- profiles and demand --------------------------------------------------------------------


@message(50)
class ProfileDevice:
    """Controller -> agent: measure these variants over the device's partition menu."""

    request_id: int
    device_id: str
    variants: tuple[VariantSpec, ...]
    partitions: tuple[int, ...]
    batches: tuple[int, ...]
    colocation: bool = True
    repeats: int = 20


@message(51)
class ProfileProgress:
    """Agent -> controller: how far a profiling run is; the last one has ``done`` set."""

    request_id: int
    agent_id: str
    device_kind: str
    completed: int
    total: int
    samples: tuple[ProfileSample, ...] = ()
    colocations: tuple[ColocationSample, ...] = ()
    done: bool = False
    error: str = ""


@message(52)
class DemandReport:
    """Gateway -> controller: requests per variant since the last report, and of those the ones
    that missed their deadline (answered late, 504, or turned away because no variant could meet it)
    and the ones that named the variant itself rather than its family (``named``: such a request
    is never served by another variant, so a plan that scales accuracy must keep it deployed)."""

    gateway_id: str
    window_s: float
    counts: dict[str, int]
    missed: dict[str, int] = dataclasses.field(default_factory=dict)
    named: dict[str, int] = dataclasses.field(default_factory=dict)


@message(53)
class GetProfiles:
    """Operator -> controller: the profile store's contents; ``rerun`` re-measures every device."""

    rerun: bool = False


@message(55)
class Replan:
    """Operator -> controller: re-plan now (with another policy, if named), hysteresis aside."""

    policy: str = ""


@message(56)
class ReplanReply:
    policy: str
    accepted: bool
    message: str = ""


@message(54)
class ProfilesReply:
    samples: tuple[ProfileSample, ...]
    colocations: tuple[ColocationSample, ...]
    running: tuple[str, ...]  # "agent: 12/40" for profiling runs in progress


# --- bandit ---------------------------------------------------------------------------------


@message(34)
class PolicySnapshot:
    """Controller -> gateways: a family's learned policy. The model bytes travel in frame 1."""

    family: str
    version: int
    vw_args: str
    model_bytes: int


@message(35)
class DecisionRecords:
    """Gateway -> controller: decisions joined with their rewards, in batches."""

    records: tuple[DecisionRecord, ...]


# --- operators ------------------------------------------------------------------------------


@message(40)
class GetStatus:
    pass


@message(41)
class StatusReply:
    controller_epoch: int
    routing_version: int
    agents: tuple[AgentStatus, ...]
    workers: tuple[WorkerStatus, ...]
    models: tuple[ModelStatus, ...]
    gateways: tuple[str, ...]
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)  # variant -> why it cannot be served
    replans: tuple[ReplanRecord, ...] = ()  # the most recent re-plans, newest first


# --- data plane -----------------------------------------------------------------------------


@message(100)
class WorkerHello:
    """A worker announces itself on a gateway's data socket (and after every reconnect)."""

    worker_id: str
    variants: tuple[str, ...]


@message(101)
class InferRequest:
    """Tensors travel as raw frames after the header, in the order of ``inputs``.

    ``budget_us`` is the time left to the deadline when sent; the worker turns it into a
    deadline on its own clock, so hosts need no synchronised clocks.
    """

    request_id: int
    variant: str
    budget_us: int
    inputs: tuple[TensorMeta, ...]


@message(102)
class InferReply:
    """On ``ReplyStatus.OK``, ``outputs`` describes the raw frames after it."""

    request_id: int
    variant: str
    status: ReplyStatus
    queue_us: int = 0
    compute_us: int = 0
    batch_size: int = 0
    outputs: tuple[TensorMeta, ...] = ()
    error: str = ""
