"""What this host offers: its usable CPU cores and memory, and CUDA devices when torch sees them.

torch is imported only on a host with an NVIDIA driver loaded: importing it costs seconds, and
an agent on a CPU-only host should register at once.

CPU core numbers in a Partition index ``usable_cores()``, so a partition stays valid when
the agent runs inside a cgroup or under taskset with a sparse core set.
"""

from __future__ import annotations

import os
import platform
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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_devices(max_cores: int = 0, *, with_cuda: bool = True) -> tuple[DeviceInfo, ...]:
    devices = [
        DeviceInfo(
            device_id="cpu0",
            kind="cpu",
            name=cpu_name(),
            cores=len(usable_cores(max_cores)),
            memory_bytes=total_memory_bytes(),
        )
    ]
    if with_cuda:
        devices.extend(_cuda_devices())
    return tuple(devices)


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
