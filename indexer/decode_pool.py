"""Decoding worker processes that survive a decoder crashing its process.

A C++ decoder (GDCM, OpenJPEG) can abort the whole process on a hostile file instead of
raising. With ``multiprocessing.Pool.imap`` a worker that dies that way loses its task and the
run waits for ever; here a dead worker is noticed (``BrokenProcessPool``), the tasks that were
in flight are run again one at a time in a fresh single-worker process, the one that kills its
process alone is recorded as a failed item with the reason, and the run goes on with a new pool.

Results come back in the order of the tasks, as ``imap`` gives them; at most ``window`` tasks
are in flight, so a stream of a million records is never materialised.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from indexer.decode import (
    FAILED,
    Decoded,
    decode_task,
    init_worker,
    private,
    shown_key,
    split_version,
)

log = logging.getLogger(__name__)

CRASH_REASON = ("the decoder crashed its worker process ({error}); the file was not decoded "
                "(it is likely malformed)")


def crashed(task: tuple, error: BaseException) -> Decoded:
    """The failed item of a task whose decoding killed its process (de-identified as the
    worker would have: :func:`indexer.decode.private`)."""
    record = task[0]
    size, mtime = split_version(getattr(record, "version", None))
    return private(Decoded(str(record.key), size, mtime, None, FAILED,
                           CRASH_REASON.format(error=type(error).__name__),
                           version=getattr(record, "version", None)), record, _policy(task))


def _policy(task: tuple):
    """The task's :class:`~indexer.decode.IngestPolicy` (``decode_task``'s 4th argument)."""
    return task[3] if len(task) > 3 else None


def _executor(workers: int, connections) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=init_worker, initargs=(tuple(connections),))


def _isolated(task: tuple, connections, task_fn: Callable) -> Decoded:
    """Run one task alone in a fresh process; a crash there is that task's own."""
    with _executor(1, connections) as single:
        try:
            return single.submit(task_fn, task).result()
        except BrokenProcessPool as error:
            log.warning("%s: %s", shown_key(task[0], _policy(task)),
                        CRASH_REASON.format(error=type(error).__name__))
            return crashed(task, error)


def decode_stream(tasks: Iterable[tuple], workers: int, connections=(), *,
                  task_fn: Callable[[tuple], Decoded] = decode_task,
                  window: int | None = None) -> Iterator[Decoded]:
    """``task_fn(task)`` for every task, in order, in ``workers`` spawned processes (``0``: in
    this process, where a crashing decoder takes the run down with it).

    ``task_fn`` must be a module-level function (it is pickled by name); ``connections`` are
    registered in each worker (:func:`indexer.decode.init_worker`).
    """
    tasks = iter(tasks)
    if workers <= 0:
        yield from map(task_fn, tasks)
        return
    window = window or max(4, 16 * workers)
    pool = _executor(workers, connections)
    in_flight: deque[tuple[tuple, Future]] = deque()
    carry: deque[tuple] = deque()  # taken from ``tasks`` but not submitted: the pool had broken
    try:
        while True:
            broken = False
            while len(in_flight) < window:
                task = carry.popleft() if carry else next(tasks, None)
                if task is None:
                    break
                try:
                    in_flight.append((task, pool.submit(task_fn, task)))
                except BrokenProcessPool:  # a worker died since the last result was taken
                    carry.appendleft(task)
                    broken = True
                    break
            if not in_flight and not broken:
                return
            if not broken:
                task, future = in_flight[0]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                else:
                    in_flight.popleft()
                    yield result
                    continue
            # Some task in flight killed its process; the pool is unusable. Find the culprit by
            # running each in-flight task alone, then carry on with a new pool.
            pool.shutdown(wait=True, cancel_futures=True)
            pending = list(in_flight)
            in_flight.clear()
            log.warning("a decoding worker died; retrying the task(s) in flight one by one")
            for retry, done in pending:
                if done.done() and not done.cancelled() and done.exception() is None:
                    yield done.result()  # finished before the crash
                else:
                    yield _isolated(retry, connections, task_fn)
            pool = _executor(workers, connections)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
