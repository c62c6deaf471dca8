"""The goodput benchmark's CPU breakdown: each process of a server under test counted in its part,
its ZeroMQ I/O threads apart, and the model time a letmesh reply reports per request."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import zmq

from benchmarks.support import loadgen, procfs
from benchmarks.support.goodput_report import parts_text
from benchmarks.support.server_under_test import Server


def test_a_reply_gives_its_batch_compute_time_per_request_and_a_plain_reply_none() -> None:
    body = (b'{"model_name":"m","outputs":[],"parameters":{"letmesh_variant":"m","letmesh_queue_us":40,'
            b'"letmesh_compute_us":9000,"letmesh_batch_size":4,"letmesh_latency_us":12000}}')
    assert loadgen.model_us(body) == 2250.0
    assert loadgen.model_us(b'{"model_name":"m","outputs":[]}') is None


def test_a_processes_zeromq_io_threads_are_counted_apart_from_its_own() -> None:
    context = zmq.Context()  # its I/O thread starts with the first socket
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        before = procfs.on_cpu_s_by_thread_kind(os.getpid())
        for _ in range(2000):
            push.send(b"x" * 64)
            pull.recv()
        spun = time.thread_time() + 0.05
        while time.thread_time() < spun:  # this thread's own work
            pass
        after = procfs.on_cpu_s_by_thread_kind(os.getpid())
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        context.term()
    assert after["zmq"] > before["zmq"]  # the messages went through the I/O thread
    assert after["own"] - before["own"] >= 0.05


CHILD = "cpu-by-part-child"


class _Two(Server):
    """A server of two processes: this one and a child, told apart by their command lines."""

    def __init__(self) -> None:
        self.roots = [os.getpid()]

    def part(self, pid: int) -> str:
        return "child" if CHILD in procfs.argv(pid) else "parent"


def test_each_process_is_counted_in_its_own_part() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.thread_time() + 0.3\n"
                              "while time.thread_time() < end: pass\ntime.sleep(30)", CHILD])
    try:
        server = _Two()
        deadline = time.monotonic() + 30
        while server.cpu_s_by_part().get("child", 0.0) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        parts = server.cpu_s_by_part()
    finally:
        child.kill()
        child.wait()
    assert parts["child"] >= 0.3
    assert parts["parent"] > 0


def test_the_report_puts_each_parts_zeromq_threads_and_the_model_beside_it() -> None:
    line = parts_text({"worker ZeroMQ I/O": 0.1, "agent": 0.04, "gateway": 1.25, "worker": 3.3,
                       "gateway ZeroMQ I/O": 0.09}, 2.9)
    assert line == "gateway 1.25 + ZeroMQ I/O 0.09, worker 3.30 (model 2.90) + ZeroMQ I/O 0.10, agent 0.04"
    assert parts_text({"server": 3.2}, None) == "server 3.20"
    assert parts_text({}, None) == "(not measured)"
