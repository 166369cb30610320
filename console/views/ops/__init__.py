"""Ops: sync runs, job queues and the audit log (menu "Ops").

* ``/ops/sync/``: the history of sync runs per source with counts, errors, duration and the
  rejected records with their raw payloads; "run now" enqueues the source's sync job on the
  ``sync`` queue (admins).
* ``/ops/queues/``: RQ's queues and registries (queued, started, scheduled, deferred,
  finished, failed with tracebacks, canceled) and the workers; retry a failed job, cancel a
  waiting one (admins; both written to the audit log).
* ``/ops/audit/``: every audited change (who, when, before and after), read-only.

Reading needs ``view``; every action needs ``manage`` and answers 403 otherwise.
"""
from __future__ import annotations

from console.views.ops.audit import AuditView
from console.views.ops.queues import QueuesView
from console.views.ops.sync import SyncRunsView

MENU_ORDER = 80

__all__ = ["AuditView", "QueuesView", "SyncRunsView", "register"]


def register(admin) -> None:
    admin.add_view(SyncRunsView(name="Sync runs", category="Ops", endpoint="ops_sync", url="/ops/sync"))
    admin.add_view(QueuesView(name="Job queues", category="Ops", endpoint="ops_queues", url="/ops/queues"))
    admin.add_view(AuditView(name="Audit log", category="Ops", endpoint="ops_audit", url="/ops/audit"))
