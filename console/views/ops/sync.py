"""Sync runs: history per source, one run's errors and rejected records, and "run now"."""
from __future__ import annotations

from flask import flash, redirect, request, url_for
from flask_admin import expose

from console.views.base import SecureView
from console.views.ops.common import PAGE_SIZE, audit, helpers, require_manage

SYNC_JOB_TIMEOUT_SECONDS = 3600  # as the cron's (jobs.schedule)
#: source kind -> the RQ job that syncs it (never a connector called in the request)
SYNC_JOBS = {"soap": "jobs.sync.sync_erp", "rest": "jobs.sync.sync_erp", "salesforce": "jobs.salesforce.sync_salesforce"}
STATUSES = ("running", "succeeded", "partial", "failed")


class SyncRunsView(SecureView):
    permission = "view"

    @expose("/")
    def index(self):
        """Runs newest first, filtered by source and status, paged."""
        from middleware.models import Source, SyncRun

        sources = list(Source.select().order_by(Source.name))
        by_id = {s.id: s for s in sources}
        source_name = request.args.get("source") or ""
        status = request.args.get("status") or ""
        page = max(request.args.get("page", 1, type=int) or 1, 1)
        query = SyncRun.select()
        chosen = next((s for s in sources if s.name == source_name), None)
        if source_name:
            query = query.where(SyncRun.source == (chosen.id if chosen else -1))
            query = query.order_by(SyncRun.started_at.desc())  # the (source, started_at) index
        else:
            query = query.order_by(SyncRun.id.desc())
        if status in STATUSES:
            query = query.where(SyncRun.status == status)
        runs = list(query.limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE))
        return self.render("console/ops/sync_runs.html", runs=runs[:PAGE_SIZE], more=len(runs) > PAGE_SIZE,
                           page=page, sources=sources, by_id=by_id, source_name=source_name, status=status,
                           statuses=STATUSES, runnable=[s for s in sources if s.kind in SYNC_JOBS and s.enabled],
                           **helpers())

    @expose("/<int:run_id>/")
    def run(self, run_id: int):
        """One run: counts per object, errors, cursors, and its rejected records with raw payloads."""
        from flask import abort

        from middleware.models import RejectedRecord, SyncRun

        run = SyncRun.get_or_none(SyncRun.id == run_id)
        if run is None:
            abort(404)
        page = max(request.args.get("page", 1, type=int) or 1, 1)
        rejects = list(RejectedRecord.select().where(RejectedRecord.run == run)
                       .order_by(RejectedRecord.id).limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE))
        return self.render("console/ops/sync_run.html", run=run, source=run.source, rejects=rejects[:PAGE_SIZE],
                           more=len(rejects) > PAGE_SIZE, page=page, **helpers())

    @expose("/run", methods=("POST",))
    def run_now(self):
        """Enqueue the source's sync job on the ``sync`` queue (admins); a worker runs it."""
        from jobs.queues import get_queue
        from middleware.models import Source

        require_manage()
        name = request.form.get("source", "")
        full = request.form.get("full") in ("1", "on", "y", "true")
        source = Source.get_or_none(Source.name == name)
        if source is None or source.kind not in SYNC_JOBS:
            flash(f"No source {name!r} that can be synced.", "danger")
            return redirect(url_for(".index"))
        job = get_queue("sync").enqueue(SYNC_JOBS[source.kind], source.name, full=full,
                                        job_timeout=SYNC_JOB_TIMEOUT_SECONDS,
                                        description=f"{'full ' if full else ''}sync of {source.name} (console)")
        audit("sync.run_now", "source", str(source.id), None,
              {"source": source.name, "full": full, "job_id": job.id, "queue": "sync"})
        flash(f"{'Full sync' if full else 'Sync'} of {source.name} queued (job {job.id}).", "success")
        return redirect(url_for(".index", source=source.name))
