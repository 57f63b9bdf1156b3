"""Batcher: merges concurrent requests into one signature call, like TF Serving's
--enable_batching (SharedBatchScheduler + BatchingSession).

Tasks that can share a call (same servable version, signature and output filter, same
dtypes and same shapes after dimension 0) queue together. A batch runs when it is full
(max_batch_size rows) or when its oldest task has waited batch_timeout_micros and a batch
thread is free. Inputs are concatenated along dimension 0 and each output is split back by
rows.

Two places where this differs from TF Serving, both so that one request cannot hurt others:
if a merged call fails, each task is rerun alone and gets its own result or error; and if a
signature's outputs are not batch-major, the tasks are run one by one.
"""

import collections
import threading
import time

import numpy as np

from tfbert.serving.serving_error import ServingError, invalid_argument, unavailable


class _Task:
    def __init__(self, inputs, size):
        self.inputs = inputs
        self.size = size
        self.done = threading.Event()
        self.result = None
        self.error = None


class _Batch:
    def __init__(self, key, run):
        self.key = key
        self.run = run
        self.tasks = []
        self.size = 0
        self.created = time.monotonic()


class Batcher:
    """A shared batch scheduler.

    Args:
        max_batch_size: most rows in one merged call; a larger request is INVALID_ARGUMENT.
        batch_timeout_micros: how long a partial batch waits for more tasks.
        max_enqueued_batches: per queue; beyond it a request is UNAVAILABLE.
        num_batch_threads: threads running merged calls.
        on_batch: called with (key, rows) for each merged call (metrics).
    """

    def __init__(self, max_batch_size=1000, batch_timeout_micros=0, max_enqueued_batches=10,
                 num_batch_threads=1, on_batch=None):
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout_micros / 1e6
        self.max_enqueued_batches = max_enqueued_batches
        self.num_batch_threads = num_batch_threads
        self._on_batch = on_batch
        self._queues = collections.OrderedDict()  # key -> deque of _Batch
        self._cv = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key, run, inputs):
        """Runs `run(inputs)` as part of a batch; returns this task's rows of the outputs.

        `key` must identify `run` (tasks with one key are merged); `inputs` is a dict of
        numpy arrays that all have the same dimension 0.
        """
        sizes = {int(v.shape[0]) if v.ndim else -1 for v in inputs.values()}
        if -1 in sizes:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        if len(sizes) > 1:
            raise invalid_argument(
                "Batching Run() input tensors must have equal 0th-dimension size")
        size = sizes.pop() if sizes else 0
        if size > self.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {self.max_batch_size}")
        if size == 0:
            return run(inputs)
        task = _Task(inputs, size)
        with self._cv:
            if self._stopping:
                raise unavailable("The server is shutting down")
            queue = self._queues.setdefault(key, collections.deque())
            if queue and queue[-1].size + size <= self.max_batch_size:
                batch = queue[-1]
            else:
                if len(queue) >= self.max_enqueued_batches:
                    raise unavailable(
                        "The batch scheduling queue to which this task was submitted is full")
                batch = _Batch(key, run)
                queue.append(batch)
            batch.tasks.append(task)
            batch.size += size
            self._cv.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self):
        """Runs what is queued, then stops the batch threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()

    def _next_batch(self):
        """Under the lock: a batch ready to run, or the seconds until one may be."""
        now = time.monotonic()
        wait = None
        for key, queue in self._queues.items():
            if not queue:
                continue
            head = queue[0]
            due = head.created + self.batch_timeout
            # A batch is closed once another batch queued behind it.
            if head.size >= self.max_batch_size or len(queue) > 1 or now >= due or self._stopping:
                queue.popleft()
                if not queue:
                    del self._queues[key]
                return head, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, wait

    def _work(self):
        while True:
            with self._cv:
                while True:
                    batch, wait = self._next_batch()
                    if batch is not None:
                        break
                    if self._stopping and not self._queues:
                        return
                    self._cv.wait(wait)
            self._run(batch)

    def _run(self, batch):
        tasks = batch.tasks
        if self._on_batch is not None:
            self._on_batch(batch.key, batch.size)
        if len(tasks) == 1:
            self._run_alone(batch.run, tasks[0])
            return
        names = list(tasks[0].inputs)
        merged = {n: np.concatenate([t.inputs[n] for t in tasks], axis=0) for n in names}
        try:
            outputs = batch.run(merged)
        except ServingError:
            for task in tasks:
                self._run_alone(batch.run, task)
            return
        except BaseException as e:  # noqa: BLE001 -- never leave a waiting request hanging.
            for task in tasks:
                task.error = e
                task.done.set()
            return
        if not all(v.ndim and v.shape[0] == batch.size for v in outputs.values()):
            for task in tasks:
                self._run_alone(batch.run, task)
            return
        offset = 0
        for task in tasks:
            task.result = {k: v[offset:offset + task.size] for k, v in outputs.items()}
            offset += task.size
            task.done.set()

    @staticmethod
    def _run_alone(run, task):
        try:
            task.result = run(task.inputs)
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting request thread.
            task.error = e
        task.done.set()
