"""An ordered, bounded pool of encoding processes that can always be stopped.

``multiprocessing.Pool`` can hang at shutdown: ``terminate()`` joins its task-handler thread,
which may sit blocked in ``SimpleQueue.put`` writing a task to workers that were just killed
(seen as rare hangs of failing preprocessing runs). This pool has no helper threads and no shared
queues: each worker owns one duplex pipe, the parent sends a task only to an *idle* worker (which
is blocked reading it, so the send cannot deadlock), and reads results with
``multiprocessing.connection.wait``. Stopping is ``SIGTERM``, a short join, then ``SIGKILL``;
nothing in the parent can block on a dead worker.

Results come back in task order (out-of-order results are held until their turn) and at most
``max_in_flight`` tasks are sent but not yet handed to the caller, which bounds memory.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a worker gets to exit after SIGTERM (or the end-of-work message) before SIGKILL.
STOP_GRACE_SECONDS = 2.0


class WorkerError(RuntimeError):
    """A worker raised an unexpected exception or died; the message carries its traceback."""


def _worker_main(
    conn: Connection, init: Callable[..., None], init_args: tuple, fn: Callable[[Any], Any]
) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        init(*init_args)
        while True:
            task = conn.recv()
            if task is None:
                return
            try:
                conn.send((True, fn(task)))
            except Exception:
                conn.send((False, traceback.format_exc()))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the parent went away: nothing left to do


class OrderedPool:
    """``workers`` processes running ``fn`` on tasks; see the module docstring.

    Args:
        workers: number of processes (>= 1).
        init: called once in each worker with ``init_args`` before its first task.
        fn: the task function (module level, so that ``spawn`` can find it).
        max_in_flight: tasks sent but not yet yielded, at most (default ``2 * workers``).
    """

    def __init__(
        self,
        workers: int,
        init: Callable[..., None],
        init_args: tuple,
        fn: Callable[[Any], Any],
        max_in_flight: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_in_flight = max_in_flight or 2 * workers
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        try:
            for _ in range(workers):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main, args=(child, init, init_args, fn), daemon=True)
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
        except BaseException:
            self.terminate()
            raise

    def imap(self, tasks: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn`` over ``tasks``, in task order.

        Raises:
            WorkerError: a task raised (its traceback in the message) or a worker died.
        """
        it = iter(tasks)
        idle = list(range(len(self._conns)))
        busy: dict[int, int] = {}  # worker -> task number
        done: dict[int, Any] = {}  # task number -> result, waiting for its turn
        sent = 0
        next_out = 0
        exhausted = False
        while True:
            while not exhausted and idle and sent - next_out < self.max_in_flight:
                try:
                    task = next(it)
                except StopIteration:
                    exhausted = True
                    break
                w = idle.pop()
                self._conns[w].send(task)
                busy[w] = sent
                sent += 1
            if next_out in done:
                yield done.pop(next_out)
                next_out += 1
                continue
            if exhausted and next_out == sent:
                return
            ready = wait([self._conns[w] for w in busy])
            for w in list(busy):
                if self._conns[w] not in ready:
                    continue
                try:
                    ok, value = self._conns[w].recv()
                except EOFError:
                    self._procs[w].join(STOP_GRACE_SECONDS)  # reap it, for its exit code
                    code = self._procs[w].exitcode
                    raise WorkerError(f"an encoding worker died (exit code {code})") from None
                if not ok:
                    raise WorkerError(f"an encoding worker failed:\n{value}")
                done[busy.pop(w)] = value
                idle.append(w)

    def close(self) -> None:
        """Let idle workers finish normally (end-of-work message), then make sure all are gone."""
        for c in self._conns:
            try:
                c.send(None)
            except (OSError, ValueError):
                pass
        for p in self._procs:
            p.join(STOP_GRACE_SECONDS)
        self.terminate()

    def terminate(self) -> None:
        """Stop every worker now: SIGTERM, a short join, SIGKILL; never blocks for long."""
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(STOP_GRACE_SECONDS)
            if p.is_alive():
                logger.warning("worker %d ignored SIGTERM; killing it", p.pid)
                p.kill()
                p.join(STOP_GRACE_SECONDS)
        for c in self._conns:
            c.close()
        self._procs, self._conns = [], []

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
