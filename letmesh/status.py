"""``letmesh status``: ask the controller for agents, workers and models, and print them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import zmq

from letmesh.startup import device_text
from mesh.keys import KeysError, operator_keys, split_server_key
from protocol.codec import decode, encode
from protocol.error import FrameTooLarge, ProtocolError
from protocol.message import ErrorReply, GetStatus, StatusReply
from protocol.schema import to_plain

# The keyring of each mesh this process launched (controller address -> keys dir), so asking
# a local mesh needs no flag; see ``operator_keys_dir``.
KNOWN_KEYRINGS: dict[str, Path] = {}


class StatusUnavailable(Exception):
    """The controller did not answer in time."""


def operator_keys_dir(controller: str, keys_dir: str | Path | None = None) -> Path | None:
    """Where the operator key for ``controller`` is: the flag, a mesh this process launched,
    ``$LETMESH_KEYS_DIR``, or ``.letmesh/keys`` when it exists (what ``letmesh up`` made); None: plaintext."""
    for candidate in (keys_dir, KNOWN_KEYRINGS.get(controller), os.environ.get("LETMESH_KEYS_DIR")):
        if candidate:
            return Path(candidate)
    default = Path(".letmesh") / "keys"
    return default if default.is_dir() else None


def ask_controller(controller: str, msg: object, reply_type: type, timeout_s: float = 3.0,
                   keys_dir: str | Path | None = None):
    """One request/reply with the controller over a short-lived DEALER socket (as an operator, with keys)."""
    folder = operator_keys_dir(controller, keys_dir)
    try:
        keys = operator_keys(folder) if folder is not None else None
    except KeysError as exc:
        raise StatusUnavailable(str(exc)) from None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"cli:{uuid.uuid4().hex[:12]}".encode())
    monitor = None
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys.public_key, keys.secret_key, keys.server_key
        # A refused key is silence on the socket: the monitor is what says the handshake failed.
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    try:
        try:
            sock.connect(controller)
        except zmq.ZMQError as exc:
            raise StatusUnavailable(f"cannot dial {controller!r} ({exc.strerror}): a controller address "
                                    "reads tcp://HOST:PORT") from None
        sock.send_multipart(encode(msg))
        if not sock.poll(int(timeout_s * 1000)):
            if monitor is not None and monitor.poll(0):
                raise StatusUnavailable(f"the controller at {controller} refused this key ({folder}): it is not an "
                                        "authorised operator key of that mesh (revoked, or from another keyring)")
            hint = "" if keys is not None else " (a mesh with keys answers only an operator key: --keys DIR)"
            raise StatusUnavailable(f"controller at {controller} did not answer within {timeout_s:.0f} s{hint}")
        try:
            reply, _ = decode(sock.recv_multipart())
        except FrameTooLarge as exc:
            raise StatusUnavailable(f"{controller} answered a reply larger than this letmesh reads ({exc})") from None
        except ProtocolError as exc:
            raise StatusUnavailable(f"{controller} answered something that is not a letmesh controller's reply "
                                    f"({exc}); is it the controller's port?") from None
        if isinstance(reply, ErrorReply):
            raise StatusUnavailable(f"controller refused: {reply.message}")
        if not isinstance(reply, reply_type):
            raise StatusUnavailable(f"controller answered {type(reply).__name__}")
        return reply
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(0)
        sock.close(0)
        ctx.term()


def fetch_status(controller: str, timeout_s: float = 3.0, keys_dir: str | Path | None = None) -> StatusReply:
    return ask_controller(controller, GetStatus(), StatusReply, timeout_s, keys_dir)


def status_json(status: StatusReply) -> dict:
    """The reply as plain data for ``--json`` (gateways by address, without their keys)."""
    doc = to_plain(status)
    doc["gateways"] = [split_server_key(g)[0] for g in status.gateways]
    return doc


def format_status(status: StatusReply) -> str:
    # A table's version counts up within the controller's epoch (the high 32 bits), so tables of a
    # restarted controller order after the last one's: shown as the count within this epoch.
    lines = [f"controller epoch {status.controller_epoch}, routing table v{status.routing_version & 0xFFFFFFFF}, "
             f"gateways: {', '.join(split_server_key(g)[0] for g in status.gateways) or 'none'}", "", "AGENTS"]
    for a in status.agents:
        devices = ", ".join(device_text(d, memory=True) for d in a.devices)
        state = "alive" if a.alive else "LOST"
        if not a.alive and a.forget_in_s > 0:
            state += f" (silent {a.last_seen_s:.0f} s, forgotten in {a.forget_in_s:.0f} s)"
        lines.append(f"  {a.agent_id:<16} {state:<6} {a.hostname}  {devices}")
    lines += ["", "WORKERS"]
    for w in status.workers:
        part = w.partition
        where = f"{part.device_id} cores {list(part.cores)}" if part.kind != "cuda" else f"{part.device_id} MPS {part.mps_percent}%"
        slow = "".join(f"  {v} x{x:.2f}" for v, x in sorted(w.slowdown.items()))
        peak = f"  peak {w.memory_peak_bytes / 2**20:.0f} MiB" if w.memory_peak_bytes else ""
        lines.append(f"  {w.worker_id:<16} {w.state:<10} pid {w.pid:<8} {where:<22} restarts {w.restarts}  "
                     f"{', '.join(w.variants)}{peak}" + (f"  (compute vs warm-up:{slow})" if slow else ""))
        lines += [f"  {'':<16} {variant} runs on {runtime}" for variant, runtime in sorted(w.runtimes.items())]
    lines += ["", "MODELS"]
    for m in status.models:
        lines.append(f"  {m.name:<16} {m.family:<10} accuracy {m.accuracy:.3f}  {m.state:<11} "
                     f"{', '.join(m.workers) or m.reason}")
    for name, reason in sorted(status.unavailable.items()):
        # set aside: its family and accuracy are not known (its manifest may be what is wrong)
        lines.append(f"  {name:<16} {'?':<10} accuracy {'?':<5}  {'UNAVAILABLE':<11} set aside: {reason}")
    return "\n".join(lines)
