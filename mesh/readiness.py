"""Waiting on the asyncio loop until a libzmq socket can be read or written.

libzmq signals through one file descriptor that the socket's state may have changed, and
``ZMQ_EVENTS`` says what it is now. The signal is edge-triggered and whichever call looks first
consumes it: a send, a receive, a read of ``ZMQ_EVENTS``. pyzmq's asyncio sockets wrap each
waiting operation in a future of their own with a callback, a timer slot and a queue entry,
and re-read the events several times per message. Here one reader callback per socket wakes
whoever waits to read or to write; the operations themselves run on the plain socket, without
a future, and an operation made while someone waits is followed by ``recheck``, so that a
signal it consumed still wakes the waiter.
"""

from __future__ import annotations

import asyncio

import zmq


class Readiness:
    """Wakes tasks waiting for ``zmq.POLLIN`` or ``zmq.POLLOUT`` on one socket.

    The descriptor is watched from the loop of the latest wait; ``close`` before the socket closes."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: list[asyncio.Future] = []
        self._writers: list[asyncio.Future] = []
        self._closed = False

    async def wait(self, event: int) -> None:
        """Until the socket has ``event`` (``zmq.POLLIN`` or ``zmq.POLLOUT``); raises
        zmq.ZMQError(ENOTSOCK) if the socket is closed meanwhile."""
        waiters = self._readers if event == zmq.POLLIN else self._writers
        while not self._events() & event:
            loop = self._watch()
            if waiters:  # waits cancelled since the last wake-up (a receive under a timeout, say)
                waiters[:] = [w for w in waiters if not w.done()]
            waiter = loop.create_future()
            waiters.append(waiter)
            await waiter

    def recheck(self) -> int:
        """Read the socket's events, wake those waiting for one it has, and return them. The
        loop calls this when the descriptor signals; call it after any operation on the socket
        while someone may wait, since the operation may have consumed the signal."""
        if self._closed:
            return 0
        try:
            events = self._sock.get(zmq.EVENTS)
        except zmq.ZMQError:
            return 0
        if events & zmq.POLLIN and self._readers:
            _wake(self._readers)
        if events & zmq.POLLOUT and self._writers:
            _wake(self._writers)
        return events

    @property
    def waiting(self) -> bool:
        return bool(self._readers or self._writers)

    def close(self) -> None:
        """Stop watching the descriptor; waiters raise ENOTSOCK. Before the socket closes: its
        descriptor is gone after."""
        if self._closed:
            return
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        for waiter in self._readers + self._writers:
            if not waiter.done():
                waiter.set_exception(zmq.ZMQError(zmq.ENOTSOCK))
        self._readers.clear()
        self._writers.clear()

    def _events(self) -> int:
        if self._closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        return self.recheck()

    def _watch(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            # The callback must read the events even with no one waiting: that is what
            # consumes the signal, and a level-triggered loop would call it again and again.
            loop.add_reader(self._fd, self.recheck)
            self._loop = loop
        return loop


def _wake(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()
