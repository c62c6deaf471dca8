"""``letmesh status``: ask the controller for agents, workers and models, and print them."""

from __future__ import annotations

import uuid

import zmq

from protocol.codec import decode, encode
from protocol.message import GetStatus, StatusReply


class StatusUnavailable(Exception):
    """The controller did not answer in time."""


def ask_controller(controller: str, msg: object, reply_type: type, timeout_s: float = 3.0):
    """One request/reply with the controller over a short-lived DEALER socket."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"cli:{uuid.uuid4().hex[:12]}".encode())
    try:
        sock.connect(controller)
        sock.send_multipart(encode(msg))
        if not sock.poll(int(timeout_s * 1000)):
            raise StatusUnavailable(f"controller at {controller} did not answer within {timeout_s:.0f} s")
        reply, _ = decode(sock.recv_multipart())
        if not isinstance(reply, reply_type):
            raise StatusUnavailable(f"controller answered {type(reply).__name__}")
        return reply
    finally:
        sock.close(0)
        ctx.term()


def fetch_status(controller: str, timeout_s: float = 3.0) -> StatusReply:
    return ask_controller(controller, GetStatus(), StatusReply, timeout_s)


def format_status(status: StatusReply) -> str:
    lines = [f"controller epoch {status.controller_epoch}, routing table v{status.routing_version}, "
             f"gateways: {', '.join(status.gateways) or 'none'}", "", "AGENTS"]
    for a in status.agents:
        devices = ", ".join(f"{d.device_id} ({d.kind}, {d.cores} cores, {d.memory_bytes / 2**30:.1f} GiB)" for d in a.devices)
        lines.append(f"  {a.agent_id:<16} {'alive' if a.alive else 'LOST':<6} {a.hostname}  {devices}")
    lines += ["", "WORKERS"]
    for w in status.workers:
        part = w.partition
        where = f"{part.device_id} cores {list(part.cores)}" if part.kind != "cuda" else f"{part.device_id} MPS {part.mps_percent}%"
        slow = "".join(f"  {v} x{x:.2f}" for v, x in sorted(w.slowdown.items()))
        lines.append(f"  {w.worker_id:<16} {w.state:<10} pid {w.pid:<8} {where:<22} restarts {w.restarts}  "
                     f"{', '.join(w.variants)}" + (f"  (compute vs warm-up:{slow})" if slow else ""))
    lines += ["", "MODELS"]
    for m in status.models:
        lines.append(f"  {m.name:<16} {m.family:<10} accuracy {m.accuracy:.3f}  {m.state:<11} {', '.join(m.workers)}")
    return "\n".join(lines)
