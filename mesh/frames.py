"""Reading one ZeroMQ message frame by frame, within a bound on how many frames it may have.

libzmq hands over a multipart message only once its last frame is in, and then all of it at once,
however many frames it has; ``recv_multipart`` would make a Python object of each. Reading frame by
frame, a message past the bound is let go as it is read, so a peer cannot make this process hold
millions of frame objects.
"""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio


async def receive_frames(sock: zmq.asyncio.Socket, now: zmq.Socket, most: int) -> list[zmq.Frame] | None:
    """The next message's frames from ``sock``, or None for one of more than ``most`` frames (read
    to its end and dropped). ``now``: the same libzmq socket without asyncio's bookkeeping, for
    what is already there (the rest of a message whose first frame has come always is)."""
    try:
        frame = now.recv(flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        pending = sock.recv(copy=False)
        try:
            frame = await pending
        except asyncio.CancelledError:
            # Cancelled once the first frame was taken: the rest of its message goes too, or the
            # next receive would read them as a message of their own.
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                frame = pending.result()
                while frame.more:
                    frame = now.recv(flags=zmq.NOBLOCK, copy=False)
            raise
    frames, over = [frame], False
    while frame.more:
        frame = now.recv(flags=zmq.NOBLOCK, copy=False)
        if over:
            continue
        if len(frames) == most:
            frames, over = [], True
            continue
        frames.append(frame)
    return None if over else frames
