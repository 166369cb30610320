"""Job queues from RQ's own registries, the workers, and retry / cancel."""
from __future__ import annotations

from flask import abort, flash, redirect, request, url_for
from flask_admin import expose

from console.views.base import SecureView
from console.views.ops.common import PAGE_SIZE, audit, helpers, require_manage, safe_next

#: what the pages call each registry (``queued`` is the queue itself)
REGISTRIES = ("queued", "started", "scheduled", "deferred", "finished", "failed", "canceled")
CANCELABLE = ("queued", "scheduled", "deferred")


def _registry(queue, name: str):
    return {"started": queue.started_job_registry, "scheduled": queue.scheduled_job_registry,
            "deferred": queue.deferred_job_registry, "finished": queue.finished_job_registry,
            "failed": queue.failed_job_registry, "canceled": queue.canceled_job_registry}[name]


def _queue(name: str):
    from jobs.queues import QUEUE_NAMES, get_queue

    if name not in QUEUE_NAMES:
        abort(404)
    return get_queue(name)


def counts(queue) -> dict[str, int]:
    return {"queued": queue.count, **{name: _registry(queue, name).count for name in REGISTRIES[1:]}}


def job_ids(queue, registry: str, page: int) -> tuple[list[str], int]:
    """One page of job ids in ``registry`` (newest first, except the queue itself: next to run first)."""
    start = (page - 1) * PAGE_SIZE
    if registry == "queued":
        return queue.get_job_ids(start, PAGE_SIZE), queue.count
    reg = _registry(queue, registry)
    return reg.get_job_ids(start, start + PAGE_SIZE - 1, desc=registry != "scheduled"), reg.count


def exc_string(job) -> str | None:
    """The traceback of the job's latest failed execution."""
    from rq.results import Result

    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return result.exc_string
    return None


def _status(job) -> str:
    status = job.get_status(refresh=False)
    return getattr(status, "value", status) or "?"


class QueuesView(SecureView):
    permission = "view"

    @expose("/")
    def index(self):
        """Every queue with its registries' sizes, and the workers."""
        from rq import Worker

        from jobs.queues import QUEUE_NAMES, get_redis

        queues = [{"name": name, **counts(_queue(name))} for name in QUEUE_NAMES]
        workers = []
        for w in sorted(Worker.all(connection=get_redis()), key=lambda w: w.name):
            workers.append({"name": w.name, "state": w.get_state(), "queues": w.queue_names(),
                            "job_id": w.get_current_job_id(), "heartbeat": w.last_heartbeat,
                            "birth": w.birth_date, "hostname": w.hostname, "pid": w.pid,
                            "successful": w.successful_job_count, "failed": w.failed_job_count})
        return self.render("console/ops/queues.html", queues=queues, registries=REGISTRIES, workers=workers,
                           **helpers())

    @expose("/<queue>/<registry>/")
    def registry(self, queue: str, registry: str):
        """The jobs in one registry of one queue, paged."""
        from rq.job import Job

        if registry not in REGISTRIES:
            abort(404)
        q = _queue(queue)
        page = max(request.args.get("page", 1, type=int) or 1, 1)
        ids, total = job_ids(q, registry, page)
        jobs = [j for j in Job.fetch_many(ids, connection=q.connection) if j is not None]
        rows = [{"job": j, "status": _status(j),
                 "error": (exc_string(j) or "").strip().splitlines()[-1:] if registry == "failed" else []}
                for j in jobs]
        return self.render("console/ops/registry.html", queue=queue, registry=registry, rows=rows, total=total,
                           page=page, more=page * PAGE_SIZE < total, registries=REGISTRIES,
                           cancelable=registry in CANCELABLE, **helpers())

    @expose("/job/<job_id>/")
    def job(self, job_id: str):
        """One job: what it runs, its arguments, times, status and the traceback of its last failure."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        from jobs.queues import get_redis

        try:
            job = Job.fetch(job_id, connection=get_redis())
        except NoSuchJobError:
            abort(404, description=f"No job {job_id} (finished and failed jobs expire from Redis).")
        status = _status(job)
        return self.render("console/ops/job.html", job=job, status=status, traceback=exc_string(job),
                           results=job.results(), can_retry=status == "failed",
                           can_cancel=status in CANCELABLE, **helpers())

    @expose("/job/<job_id>/retry", methods=("POST",))
    def retry(self, job_id: str):
        """Requeue a failed job (admins): it leaves the failed registry and waits for a worker."""
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        from jobs.queues import get_redis

        require_manage()
        try:
            job = Job.fetch(job_id, connection=get_redis())
        except NoSuchJobError:
            abort(404)
        q = _queue(job.origin)
        before = {"status": _status(job), "queue": job.origin, "func": job.func_name}
        try:
            q.failed_job_registry.requeue(job)
        except InvalidJobOperation:
            flash(f"Job {job_id} is not in the failed registry (status {before['status']}): nothing to retry.",
                  "warning")
            return redirect(url_for(".job", job_id=job_id))
        audit("job.retry", "job", job_id, before, {"status": _status(job.fetch(job_id, connection=q.connection)),
                                                    "queue": job.origin, "func": job.func_name})
        flash(f"Job {job_id} is queued again on {job.origin}.", "success")
        return redirect(safe_next(request.form.get("next")) or url_for(".job", job_id=job_id))

    @expose("/job/<job_id>/cancel", methods=("POST",))
    def cancel(self, job_id: str):
        """Cancel a job that has not started (queued, scheduled or deferred; admins)."""
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        from jobs.queues import get_redis

        require_manage()
        try:
            job = Job.fetch(job_id, connection=get_redis())
        except NoSuchJobError:
            abort(404)
        before = {"status": _status(job), "queue": job.origin, "func": job.func_name}
        if before["status"] not in CANCELABLE:
            flash(f"Job {job_id} is {before['status']}: only a queued, scheduled or deferred job can be canceled.",
                  "warning")
            return redirect(url_for(".job", job_id=job_id))
        try:
            job.cancel()
        except InvalidJobOperation as exc:
            flash(str(exc), "warning")
            return redirect(url_for(".job", job_id=job_id))
        audit("job.cancel", "job", job_id, before, {"status": "canceled", "queue": job.origin, "func": job.func_name})
        flash(f"Job {job_id} is canceled.", "success")
        return redirect(safe_next(request.form.get("next")) or url_for(".job", job_id=job_id))
