"""What this host offers: its usable CPU cores and memory, and CUDA devices when torch sees them.

The memory a CPU device offers is the least of the host's RAM, the limit of the cgroup this
process runs in (a container's or a systemd slice's, v1 or v2, the tightest of its ancestors)
less what the agent holds itself, and the operator's own cap: the planner must not place workers
a container's limit would kill.

torch is imported only on a host with an NVIDIA driver loaded: importing it costs seconds, and
an agent on a CPU-only host should register at once.

CPU core numbers in a Partition index ``usable_cores()``, so a partition stays valid when
the agent runs inside a cgroup or under taskset with a sparse core set.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import stat

from protocol.types import DeviceInfo


def usable_cores(max_cores: int = 0) -> list[int]:
    cores = sorted(os.sched_getaffinity(0))
    return cores[:max_cores] if max_cores > 0 else cores


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def usable_memory_bytes(max_bytes: int = 0, proc: str = "/proc/self") -> int:
    """The memory this process's workers may use together: the host's RAM or the cgroup limit,
    whichever is less, less what this process holds itself (the agent's own memory counts against
    the same limit), bounded by ``max_bytes`` (0: no cap of the operator's)."""
    bounds = [b for b in (total_memory_bytes(), cgroup_memory_limit(proc)) if b > 0]
    left = max(1, min(bounds) - resident_bytes(proc)) if bounds else 0
    return min(b for b in (left, max_bytes) if b > 0) if left or max_bytes else 0


def resident_bytes(proc: str = "/proc/self") -> int:
    """What ``proc``'s process holds in memory now (VmRSS); 0 when /proc cannot tell."""
    try:
        with open(os.path.join(proc, "status")) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cgroup_memory_limit(proc: str = "/proc/self") -> int:
    """The tightest memory limit over the cgroups ``proc`` is in and their ancestors, as the
    kernel enforces it (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); 0 when none is set or
    the hierarchy cannot be read. Paths come from ``proc``/cgroup and the mounts of ``proc``/mountinfo
    (a container sees its own cgroup mounted as the root of the hierarchy)."""
    return min((limit for _, _, limit in _limited_groups(proc)), default=0)


def memory_headroom_bytes(proc: str = "/proc/self") -> int | None:
    """What more the kernel lets ``proc``'s cgroups and the host take now: at each limited cgroup
    along its path, the limit less what is charged there (v2 ``memory.current``, v1
    ``memory.usage_in_bytes``) plus the inactive file pages it would reclaim first; and the host's
    ``MemAvailable``. The least of them (0 at a full limit); None when none can be read."""
    rooms = []
    for version, folder, limit in _limited_groups(proc):
        try:
            with open(os.path.join(folder, "memory.current" if version == 2 else "memory.usage_in_bytes")) as f:
                used = int(f.read().strip())
            with open(os.path.join(folder, "memory.stat")) as f:
                stat = dict(line.split() for line in f if line.count(" ") == 1)
            inactive = int(stat.get("inactive_file" if version == 2 else "total_inactive_file", 0))
        except (OSError, ValueError):
            continue
        rooms.append(limit - used + inactive)
    try:
        with open("/proc/meminfo") as f:
            rooms.extend(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError):
        pass
    return max(0, min(rooms)) if rooms else None


def _limited_groups(proc: str) -> list[tuple[int, str, int]]:
    """(cgroup version, folder, limit) of each cgroup along ``proc``'s paths that sets a memory limit."""
    try:
        with open(os.path.join(proc, "cgroup")) as f:
            membership = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
        with open(os.path.join(proc, "mountinfo")) as f:
            mounts = [_cgroup_mount(line) for line in f]
    except OSError:
        return []
    groups = []
    for _, controllers, path in membership:
        v2 = controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        for version, root, mount_point in filter(None, mounts):
            if version == (2 if v2 else 1):
                limits = _limits_along(path, root, mount_point, "memory.max" if v2 else "memory.limit_in_bytes")
                groups.extend((version, folder, limit) for folder, limit in limits)
    return groups


# A v1 "no limit" reads as the largest page-aligned signed 64-bit value; treat anything this
# large as none.
_NO_LIMIT = 1 << 62


def _cgroup_mount(line: str) -> tuple[int, str, str] | None:
    """(cgroup version, the hierarchy's path at the mount, mount point) of a memory cgroup mount."""
    fields = line.split()
    if "-" not in fields:
        return None
    tail = fields[fields.index("-") + 1:]
    if len(fields) < 5 or not tail:
        return None
    root, mount_point = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f) for f in fields[3:5])
    if tail[0] == "cgroup2":
        return 2, root, mount_point
    if tail[0] == "cgroup" and len(tail) >= 3 and "memory" in tail[2].split(","):
        return 1, root, mount_point
    return None


def _limits_along(path: str, root: str, mount_point: str, name: str) -> list[tuple[str, int]]:
    """(folder, limit) of ``path`` and each ancestor visible under a mount of ``root`` that sets one."""
    root = root.rstrip("/")
    if not (path == root or path.startswith(root + "/") or root == ""):
        return []
    relative = path[len(root):].strip("/")
    parts = relative.split("/") if relative else []
    out = []
    for depth in range(len(parts), -1, -1):
        folder = os.path.join(mount_point, *parts[:depth])
        try:
            with open(os.path.join(folder, name)) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < _NO_LIMIT:
            out.append((folder, int(raw)))
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_devices(max_cores: int = 0, *, with_cuda: bool = True, max_memory_bytes: int = 0) -> tuple[DeviceInfo, ...]:
    cuda = _cuda_devices() if with_cuda else []  # first: torch and the CUDA libraries count as the agent's own
    devices = [
        DeviceInfo(
            device_id="cpu0",
            kind="cpu",
            name=cpu_name(),
            cores=len(usable_cores(max_cores)),
            memory_bytes=usable_memory_bytes(max_memory_bytes),
        )
    ]
    return tuple(devices + cuda)


def nvidia_driver_present() -> bool:
    """An NVIDIA kernel driver is loaded (it publishes its version and device nodes)."""
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    try:
        return any(name.startswith("nvidia") and name[6:].isdigit() for name in os.listdir("/dev"))
    except OSError:
        return False


def mps_daemon_running() -> bool:
    """An MPS control daemon listens in the pipe directory this process's CUDA clients would use:
    only then does a worker's ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` hold it to its share. The folder
    alone proves nothing (a daemon that stopped leaves it behind): its ``control`` entry must be
    there, and where it is a socket, accept a connection."""
    control = os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control")
    try:
        mode = os.stat(control).st_mode
    except OSError:
        return False
    if not stat.S_ISSOCK(mode):
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(control)
        except OSError:
            return False
    return True


def host_cpu_reason(backend: str, device: str) -> str:
    """Why a model of ``backend`` meant for ``device`` runs on the host CPU instead ("" when it
    does not): a GPU, and an ONNX Runtime without its CUDA provider (the default ``onnxruntime``
    package; ``onnxruntime-gpu`` has it), or OpenVINO, which computes on the CPU."""
    if not device.startswith("cuda"):
        return ""
    if backend == "openvino":
        return "OpenVINO computes on the CPU"
    if backend != "onnx":
        return ""
    import onnxruntime as ort  # only asked on a GPU host

    return "" if "CUDAExecutionProvider" in ort.get_available_providers() else "no CUDA provider in this onnxruntime"


def _cuda_devices() -> list[DeviceInfo]:
    if not nvidia_driver_present():
        return []
    try:
        import torch  # imported lazily: probing a CPU-only host should not pay for it
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            DeviceInfo(
                device_id=f"cuda{i}",
                kind="cuda",
                name=props.name,
                cores=props.multi_processor_count,
                memory_bytes=props.total_memory,
                sm_count=props.multi_processor_count,
                mps=mps_daemon_running(),
            )
        )
    return out
