"""Handing work to the Celery workers without making a request wait for the broker.

`StepPublisher` is the API's ``enqueue`` (the steps a request queued in the journal are
published by one thread); `Nudger` asks the workers to process stored payment
notifications, at most a few times a second. Both lose nothing when the broker does:
the journal's re-drive and the beat's backstop send it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("provisioner.api")


class StepPublisher:
    """``enqueue`` for the API: puts the step key in a queue and returns at once. One
    thread (started on first use) takes what has accumulated and publishes it with one
    producer. The steps are already QUEUED in the journal, so a key lost here (broker
    down, process killed) is sent again by the re-drive, as with a failed publish."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        self._keys: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def __call__(self, key: str) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="step-publisher",
                                                    daemon=True)
                    self._thread.start()
        self._keys.put(key)

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued, then stop the thread."""
        if self._thread is not None:
            self._keys.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._keys.get()]
            while True:
                try:
                    batch.append(self._keys.get_nowait())
                except queue.Empty:
                    break
            keys = [k for k in batch if k is not None]
            stop = len(keys) != len(batch)
            if keys:
                self._publish(keys)

    def _publish(self, keys: list[str]) -> None:
        try:
            with self._celery.producer_or_acquire() as producer:
                for key in keys:
                    try:
                        self._celery.send_task("provisioner.run_step", args=(key,),
                                               producer=producer)
                    except Exception:  # noqa: BLE001 - a broker outage must not lose the step
                        log.exception("could not enqueue %s; the re-drive will send it again",
                                      key)
        except Exception:  # noqa: BLE001 - no producer: the re-drive sends them again
            log.exception("could not enqueue %d steps; the re-drive will send them again",
                          len(keys))


class Nudger:
    """Asks the workers to process stored notifications: at most one message per
    `interval` however many webhooks arrive, sent from a thread of its own, so the
    request path never waits for the broker. A lost nudge costs latency only: the
    beat runs the same task as a backstop."""

    def __init__(self, send: Callable[[], None], interval: float = 0.2) -> None:
        self._send = send
        self._interval = interval
        self._wanted = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def __call__(self) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="nudger", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._stop = True
            self._wanted.set()
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self._send()
            except Exception:  # noqa: BLE001 - the beat's backstop processes them anyway
                log.exception("could not ask the workers to process payments")
            if self._stop:
                return
            time.sleep(self._interval)
