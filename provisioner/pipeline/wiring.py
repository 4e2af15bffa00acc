"""Builds a Runner with the real adapters. The only place that knows them all."""

from __future__ import annotations

import logging
from typing import Any

from provisioner.adapters.mail import Mailer, make_message_id, render_mail
from provisioner.clock import utcnow
from provisioner.config import Settings
from provisioner.pipeline import capabilities  # noqa: F401 - registers planners and handlers
from provisioner.pipeline.payments import reprocess_stored
from provisioner.pipeline.runner import Enqueue, Runner
from provisioner.store.db import session_factory

log = logging.getLogger("provisioner.alerts")


def ops_alert(settings: Settings) -> Any:
    def alert(*, step_key: str, order_id: int, detail: str, attempts: int) -> None:
        log.error("OPS ALERT: step %s of order %s failed after %d attempt(s): %s",
                  step_key, order_id, attempts, detail)
        rendered = render_mail(
            "ops_alert", "en",
            {"step_key": step_key, "order_id": order_id, "detail": detail, "attempts": attempts},
        )
        Mailer(settings).send(
            to=settings.ops_email,
            rendered=rendered,
            message_id=make_message_id(f"alert:{step_key}:{utcnow().isoformat()}", "provisioner"),
        )

    return alert


def runner(settings: Settings, enqueue: Enqueue) -> Runner:
    factory = session_factory(settings.effective_database_url)
    return Runner(settings, factory, enqueue, adapters={"alert": ops_alert(settings)})


def redrive(settings: Settings, enqueue: Enqueue) -> dict[str, Any]:
    factory = session_factory(settings.effective_database_url)
    result: dict[str, Any] = dict(runner(settings, enqueue).redrive())
    result["reprocessed"] = reprocess_stored(factory)
    return result
