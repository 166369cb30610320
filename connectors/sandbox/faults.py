"""Fault switches shared by the emulators, set by tests through ``POST /_sandbox/faults``.

Each emulator consults ``Faults.take(path)`` before answering an API request and
plays back what it returns: a queued HTTP status (with ``Retry-After`` for 429), a
delay (to trip client timeouts), or a mangled body (malformed JSON/XML, XML with an
external entity).  Queued faults are consumed one request at a time, so a test can
say "the next two calls answer 503, then behave".
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Fault:
    status: int | None = None  # answer with this HTTP status (401, 403, 429, 500, 503 ...)
    retry_after: int | None = None  # seconds, sent as Retry-After with 429/503
    delay: float = 0.0  # sleep before answering (seconds)
    body: str | None = None  # "malformed" | "external_entity" | "soap_fault" | "duplicate" | "vanish"
    path: str = ""  # only requests whose path contains this string consume the fault
    after: int = 0  # let this many matching requests through first

    @classmethod
    def from_json(cls, data: dict) -> "Fault":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Faults:
    queue: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    served: int = 0  # API requests answered (for tests that count calls)

    def push(self, *faults: Fault) -> None:
        with self.lock:
            self.queue.extend(faults)

    def clear(self) -> None:
        with self.lock:
            self.queue.clear()
            self.served = 0

    def take(self, path: str) -> Fault | None:
        """The fault to play for a request to ``path``, if one is queued for it."""
        with self.lock:
            self.served += 1
            for i, fault in enumerate(self.queue):
                if fault.path and fault.path not in path:
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    return None
                return self.queue.pop(i)
            return None
