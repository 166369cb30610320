"""Dunning email jobs: thin RQ entry points around :mod:`middleware.mailer`.

* :func:`send_dunning_email` sends one action at most once (the mailer's never-twice
  protocol). A transient SMTP error is raised again so RQ retries the job with
  :data:`RETRY` (30 s, 2 min, 10 min, 30 min, 1 h); on the last try the action becomes
  ``failed`` ("gave up after N attempts"). A permanent error is not raised: the action is
  ``failed`` with the server's reply and the job returns that outcome, so RQ does not retry.
  Anything unexpected propagates (RQ records it and retries).
* :func:`send_due_actions` (cron) enqueues one job per due email action on the ``dunning``
  queue, with job id ``email-<action key>`` and ``unique=True``: a second enqueue of the
  same action is refused by Redis while its job exists.
* :func:`send_test_email` is the console's "test send to me".
* :func:`plan_dunning` (cron, daily at ``ARHUB_DUNNING_PLAN_TIME`` local time): assignment
  rules, expiry of stale approvals, the plan for today, then :func:`send_due_actions`.

Retries with an interval need a worker running RQ's scheduler (``rq worker --with-scheduler``).
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from hashlib import sha256

from rq import Retry, get_current_job
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from middleware.mailer import SENDABLE, PermanentMailError, send_action, send_test
from middleware.models import ActionStatus, DunningAction, utcnow

__all__ = [
    "JOB_TIMEOUT_SECONDS",
    "MAX_ATTEMPTS",
    "QUEUE",
    "RETRY",
    "enqueue_dunning_email",
    "job_id_for",
    "plan_dunning",
    "send_due_actions",
    "send_dunning_email",
    "send_test_email",
]

log = logging.getLogger(__name__)

QUEUE = "dunning"
#: RQ's retry policy for one send: five more tries, backing off to an hour.
RETRY = Retry(max=5, interval=[30, 120, 600, 1800, 3600])
#: A send is a few SMTP round trips; RQ kills a horse stuck longer than this.
JOB_TIMEOUT_SECONDS = 300
#: An action still ``sending`` this long after its last update has lost its worker: the next
#: :func:`send_due_actions` enqueues it again so the mailer settles it.
STALE_SENDING = timedelta(minutes=15)
#: Attempts after which :func:`send_due_actions` stops re-enqueueing an action and fails it.
MAX_ATTEMPTS = 10
_ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,120}")


def job_id_for(action_key: str) -> str:
    """``email-<action key>`` (RQ ids allow letters, digits, ``_`` and ``-``; other keys are hashed)."""
    key = action_key if _JOB_ID.fullmatch(action_key) else sha256(action_key.encode()).hexdigest()[:40]
    return f"email-{key}"


def _queue():
    from jobs.queues import get_queue

    return get_queue(QUEUE)


def enqueue_dunning_email(action: DunningAction, *, queue=None, retry: Retry | None = RETRY) -> Job | None:
    """Enqueue :func:`send_dunning_email` for ``action`` once: None when a job for it is
    already waiting, scheduled or running. A job of it that has ended (finished, failed) is
    replaced."""
    queue = queue or _queue()
    job_id = job_id_for(action.key)
    for _ in range(2):
        try:
            return queue.enqueue_call(send_dunning_email, args=(action.id,), job_id=job_id, unique=True,
                                      retry=retry, timeout=JOB_TIMEOUT_SECONDS,
                                      description=f"send dunning email {action.key}")
        except DuplicateJobError:
            try:
                existing = Job.fetch(job_id, connection=queue.connection)
            except NoSuchJobError:
                continue  # it just expired
            if existing.get_status(refresh=False) not in _ENDED:
                return None
            existing.delete()
    return None


def send_dunning_email(action_id: int) -> dict:
    """RQ job: send one dunning action's email, never twice. Returns the outcome
    (``sent``, ``already_sent``, ``busy``, ``skipped``, ``not_sendable``, ``unknown``, ``failed``)."""
    from jobs.bootstrap import bootstrap

    ctx = bootstrap()
    job = get_current_job()
    final = job is not None and not job.retries_left
    try:
        return send_action(action_id, settings=ctx.settings, final_attempt=final).as_dict()
    except PermanentMailError as exc:  # recorded on the action; retrying cannot help
        return {"action_id": action_id, "status": "failed", "message_id": None, "detail": str(exc)}


def send_due_actions(now: datetime | None = None) -> dict:
    """RQ job (cron): enqueue the email actions that are due (``planned``/``approved``, or
    ``queued`` without a live job, with ``send_after`` ≤ ``now``; no ``send_after``: due on
    ``planned_for``), and actions left ``sending`` by a lost worker. Each at most once."""
    from jobs.bootstrap import bootstrap

    bootstrap()
    now = now or utcnow()
    waiting = DunningAction.status.in_(list(SENDABLE)) & (
        (DunningAction.send_after <= now) |
        (DunningAction.send_after.is_null() & (DunningAction.planned_for <= now.date())))
    stale = (DunningAction.status == ActionStatus.SENDING.value) & (DunningAction.updated_at < now - STALE_SENDING)
    actions = list(DunningAction.select(DunningAction.id, DunningAction.key, DunningAction.status,
                                        DunningAction.attempts, DunningAction.error)
                   .where(DunningAction.channel == "email", waiting | stale)
                   .order_by(DunningAction.send_after, DunningAction.id))
    queue = _queue()
    counts = {"due": len(actions), "enqueued": 0, "in_flight": 0, "gave_up": 0}
    for action in actions:
        if action.attempts >= MAX_ATTEMPTS and action.status != ActionStatus.SENDING.value:
            if _job_in_flight(queue, action):
                counts["in_flight"] += 1
                continue
            reason = f"gave up after {action.attempts} attempts: {action.error or 'unknown error'}"
            DunningAction.update(status=ActionStatus.FAILED.value, reason=reason, updated_at=utcnow()).where(
                DunningAction.id == action.id, DunningAction.status.in_(list(SENDABLE))).execute()
            counts["gave_up"] += 1
            continue
        if enqueue_dunning_email(action, queue=queue) is None:
            counts["in_flight"] += 1
            continue
        counts["enqueued"] += 1
        DunningAction.update(status=ActionStatus.QUEUED.value, updated_at=utcnow()).where(
            DunningAction.id == action.id,
            DunningAction.status.in_([ActionStatus.PLANNED.value, ActionStatus.APPROVED.value])).execute()
    log.info("dunning emails: %(due)s due, %(enqueued)s enqueued, %(in_flight)s already in flight, "
             "%(gave_up)s given up", counts)
    return counts


def _job_in_flight(queue, action: DunningAction) -> bool:
    try:
        job = Job.fetch(job_id_for(action.key), connection=queue.connection)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) not in _ENDED


def send_test_email(template_name: str, language: str, to: str, customer_id: int) -> dict:
    """RQ job: the console's "test send to me": ``template_name`` in ``language`` rendered with
    ``customer_id``'s open invoices, sent to ``to`` only. Errors propagate (the console shows them)."""
    from jobs.bootstrap import bootstrap

    ctx = bootstrap()
    return send_test(template_name, language, to, customer_id, settings=ctx.settings)


def plan_dunning(as_of: str | None = None) -> dict:
    """RQ job (cron, daily): apply the tag/segment/collector rules, expire approvals nobody
    took, plan today's actions (idempotent: a second run the same day inserts nothing), and
    enqueue the emails that are due. ``as_of`` (ISO date) defaults to today in ARHUB_TIMEZONE."""
    from datetime import date

    from jobs.bootstrap import bootstrap
    from middleware.dunning import expire_pending, plan
    from middleware.rules import apply_rules

    ctx = bootstrap()
    day = date.fromisoformat(as_of) if as_of else datetime.now(ctx.settings.tzinfo).date()
    rules = apply_rules()
    expired = expire_pending(utcnow())
    result = plan(day)
    sent = send_due_actions()
    return {"as_of": day.isoformat(), "rules": {"tags_added": getattr(rules, "tags_added", None),
                                                "collectors_changed": getattr(rules, "collectors_changed", None)},
            "expired": expired if isinstance(expired, int) else len(expired or []),
            "planned": result.inserted, "already_planned": result.already_planned, "by_status": result.by_status,
            "emails": sent}
