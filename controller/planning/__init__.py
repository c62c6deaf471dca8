"""The planning core: profiles, interference model and the gpu-let planner. Pure and synchronous.

Must not import sockets, processes, torch, the registry or any actor: callers hand it plain data
(device slots, demands, profile points) and get a Plan back.
"""

from controller.planning.error import (
    DuplicateDemand,
    PlanningError,
    UnknownPolicy,
    UnknownProfile,
)
from controller.planning.interference import (
    CoLocation,
    InterferenceModel,
    latency_features,
)
from controller.planning.planner import (
    Assignment,
    Demand,
    DeviceSlot,
    GpuLet,
    Plan,
    Serving,
    max_rate,
    plan,
)
from controller.planning.policy import POLICIES
from controller.planning.profile import LatencyModel, ProfilePoint, ProfileTable

__all__ = [
    "POLICIES",
    "Assignment",
    "CoLocation",
    "Demand",
    "DeviceSlot",
    "DuplicateDemand",
    "GpuLet",
    "InterferenceModel",
    "LatencyModel",
    "Plan",
    "PlanningError",
    "ProfilePoint",
    "ProfileTable",
    "Serving",
    "UnknownPolicy",
    "UnknownProfile",
    "latency_features",
    "max_rate",
    "plan",
]
