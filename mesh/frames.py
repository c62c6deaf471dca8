"""Reading one ZeroMQ message frame by frame, within a bound on how many frames it may have.

libzmq hands over a multipart message only once its last frame is in, and then all of it at once,
however many frames it has; ``recv_multipart`` would make a Python object of each. Reading frame by
frame, a message past the bound is let go as it is read, so a peer cannot make this process hold
millions of frame objects.
"""

from __future__ import annotations

import zmq


def take_frames(sock: zmq.Socket, most: int) -> list[zmq.Frame] | None:
    """The frames of the message waiting on ``sock``, or None for one of more than ``most``
    frames (read to its end and dropped). Raises zmq.Again when no message is waiting; never
    blocks: once a message's first frame is there, the rest of it is too."""
    frame = sock.recv(flags=zmq.NOBLOCK, copy=False)
    frames, over = [frame], False
    while frame.more:
        frame = sock.recv(flags=zmq.NOBLOCK, copy=False)
        if over:
            continue
        if len(frames) == most:
            frames, over = [], True
            continue
        frames.append(frame)
    return None if over else frames
