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
        self.closed = False

    async def wait(self, event: int, *, fresh: bool = False) -> None:
        """Until the socket has ``event`` (``zmq.POLLIN`` or ``zmq.POLLOUT``); raises zmq.ZMQError
        (ENOTSOCK, ETERM) if the socket is closed or its context ended meanwhile.

        ``fresh``: wait for the socket's next signal even if the event is there now. A ROUTER is
        writable while any of its peers has room, so a send refused for a peer that has none
        waits for a change rather than retrying at once, for ever, without giving the loop a turn."""
        waiters = self._readers if event == zmq.POLLIN else self._writers
        while fresh or not self._look() & event:
            fresh = False
            loop = self._watch()
            if waiters:  # waits cancelled since the last wake-up (a receive under a timeout, say)
                waiters[:] = [w for w in waiters if not w.done()]
            waiter = loop.create_future()
            waiters.append(waiter)
            await waiter

    def recheck(self) -> int:
        """Read the socket's events, wake those waiting for one it has, and return them. The
        loop calls this when the descriptor signals (after an operation, see ``touched``)."""
        try:
            return self._look()
        except zmq.ZMQError:
            # Closed, or its context ended: no signal will come again, and an unread one would
            # make the loop call this for ever. The waiters look again and fail as the socket does.
            self._unwatch()
            _wake(self._readers)
            _wake(self._writers)
            return 0

    def touched(self) -> None:
        """Say that an operation ran on the socket: it may have consumed the signal someone waits for."""
        if self._readers or self._writers:
            self.recheck()

    def close(self) -> None:
        """Stop watching the descriptor; waiters raise ENOTSOCK. Before the socket closes: its
        descriptor is gone after."""
        if self.closed:
            return
        self.closed = True
        self._unwatch()
        for waiter in self._readers + self._writers:
            _settle(waiter, zmq.ZMQError(zmq.ENOTSOCK))
        self._readers.clear()
        self._writers.clear()

    def _look(self) -> int:
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        events = self._sock.get(zmq.EVENTS)
        if events & zmq.POLLIN and self._readers:
            _wake(self._readers)
        if events & zmq.POLLOUT and self._writers:
            _wake(self._writers)
        return events

    def _watch(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._unwatch()
            # Waits begun on another loop cannot be resumed from this one.
            for waiter in self._readers + self._writers:
                _settle(waiter, RuntimeError("the socket is now watched from another event loop"))
            self._readers.clear()
            self._writers.clear()
            # The callback must read the events even with no one waiting: that is what
            # consumes the signal, and a level-triggered loop would call it again and again.
            loop.add_reader(self._fd, self.recheck)
            self._loop = loop
        return loop

    def _unwatch(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)


def _wake(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        _settle(waiter)
    waiters.clear()


def _settle(waiter: asyncio.Future, error: BaseException | None = None) -> None:
    if waiter.done():
        return
    try:
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
    except RuntimeError:
        pass  # its loop has closed: no one can be waiting on it any more
