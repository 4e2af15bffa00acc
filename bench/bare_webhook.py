"""The ceiling of ``bench/webhooks.py``: a bare endpoint that only checks the Stripe
signature with the SDK and answers.

It reads the same settings as the real app (``PROVISIONER_STRIPE_WEBHOOK_SECRET``,
``PROVISIONER_STRIPE_TOLERANCE_S``) and has the same shape as the real handler (an
``async`` FastAPI route taking the ``Stripe-Signature`` header), so the difference
between the two is what the real one does after the check: store, match, settle,
journal, hand off. Serve it with the same uvicorn options as the real app::

    uvicorn --app-dir bench --factory bare_webhook:create_app --workers 1
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import stripe
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    secret = os.environ["PROVISIONER_STRIPE_WEBHOOK_SECRET"]
    tolerance = int(os.environ.get("PROVISIONER_STRIPE_TOLERANCE_S", "300"))
    app = FastAPI(title="bare Stripe webhook (benchmark ceiling)")

    @app.post("/webhooks/stripe")
    async def stripe_webhook(
        request: Request, stripe_signature: Annotated[str | None, Header()] = None
    ) -> Any:
        body = await request.body()
        try:
            stripe.WebhookSignature.verify_header(body, stripe_signature or "", secret, tolerance)
        except stripe.SignatureVerificationError as exc:
            return JSONResponse({"error": "InvalidSignature", "detail": str(exc)}, 400)
        return {"status": "ok"}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
