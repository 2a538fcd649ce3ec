"""Jobs: results that cost seconds (feature visualizations, layouts, deletion/insertion scores), run once in a
background pool with their progress, and polled by the page (``GET /api/jobs/{id}``)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deepscope.app.server.problems import NotFoundError, error_body

log = logging.getLogger("deepscope.server")

STATES = ("queued", "running", "done", "failed")


@dataclass
class Job:
    """One job: ``state`` (queued, running, done, failed), ``progress`` in [0, 1], a ``message`` saying what it
    does or why it failed, and its ``result`` (a JSON-ready payload) once done."""

    id: str
    kind: str
    key: str
    state: str = "queued"
    progress: float = 0.0
    message: str = ""
    result: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self, progress: float, message: str | None = None) -> None:
        """Progress from inside the job's work."""
        with self.lock:
            self.progress = max(0.0, min(1.0, float(progress)))
            if message is not None:
                self.message = message

    def payload(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.id,
                "kind": self.kind,
                "state": self.state,
                "progress": self.progress,
                "message": self.message,
                "result": self.result,
            }


class Jobs:
    """A bounded pool running jobs one ``workers`` at a time, and the table of the latest jobs (the oldest
    finished ones are forgotten past ``kept``). The same (kind, key) asked again while it is queued or running
    gets the same job.

    >>> jobs = Jobs(workers=1)
    >>> job = jobs.submit("square", "3", lambda job: {"value": 9})
    >>> jobs.wait(job.id)["result"], jobs.get(job.id).state
    ({'value': 9}, 'done')
    >>> jobs.close()
    """

    def __init__(self, workers: int = 1, kept: int = 500):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deepscope-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._active: dict[tuple[str, str], Job] = {}
        self._futures: dict[str, Any] = {}
        self._kept = kept
        self._lock = threading.Lock()

    def submit(self, kind: str, key: str, work: Callable[[Job], Any], message: str = "") -> Job:
        """Run ``work(job)`` in the pool (its return value is the result), unless the same job is already on."""
        with self._lock:
            active = self._active.get((kind, key))
            if active is not None:
                return active
            job = Job(uuid.uuid4().hex[:16], kind, key, message=message)
            self._add(job)
            self._active[(kind, key)] = job
            self._futures[job.id] = self._pool.submit(self._run, job, work)
        return job

    def finished(self, kind: str, key: str, result: Any, message: str = "") -> Job:
        """A job that is done already (a result found in the workspace)."""
        job = Job(uuid.uuid4().hex[:16], kind, key, "done", 1.0, message, result)
        with self._lock:
            self._add(job)
        return job

    def active(self, kind: str, key: str) -> Job | None:
        with self._lock:
            return self._active.get((kind, key))

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}: it never existed or finished long ago; start it again")
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job's payload once it has finished (for tests and scripts)."""
        future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout)
        return self.get(job_id).payload()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _add(self, job: Job) -> None:
        self._jobs[job.id] = job
        finished = [j for j in self._jobs.values() if j.state in ("done", "failed")]
        for old in finished[: max(0, len(self._jobs) - self._kept)]:
            self._jobs.pop(old.id, None)
            self._futures.pop(old.id, None)

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        with job.lock:
            job.state = "running"
        try:
            result = work(job)
        except Exception as error:  # the job fails with the error's message; the server keeps serving
            body = error_body(error)
            if body["kind"] == "InternalError":
                log.exception("job %s (%s %s) failed", job.id, job.kind, job.key)
            with job.lock:
                job.state, job.message, job.result = "failed", body["error"], body
        else:
            with job.lock:
                job.state, job.progress, job.result = "done", 1.0, result
        finally:
            with self._lock:
                self._active.pop((job.kind, job.key), None)
