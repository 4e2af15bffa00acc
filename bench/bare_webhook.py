"""The ceiling of ``bench/webhooks.py``: a bare endpoint that only checks the Stripe
signature with the SDK and answers (and, when their settings are there, the same for
PayPal, with the adapter's certificate check and no transmission bookkeeping, and for
Braintree, with the SDK's parse, which is its signature check).

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
from braintree.exceptions.invalid_signature_error import InvalidSignatureError
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from provisioner.adapters.payments.braintree import BraintreeVerifier, form_fields
from provisioner.adapters.payments.paypal import PayPalVerifier
from provisioner.errors import InvalidSignature


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

    if os.environ.get("PROVISIONER_PAYPAL_WEBHOOK_ID"):
        paypal = PayPalVerifier(os.environ["PROVISIONER_PAYPAL_WEBHOOK_ID"],
                                os.environ["PROVISIONER_PAYPAL_CERT_HOSTS"].split(","),
                                ca_file=os.environ.get("PROVISIONER_PAYPAL_CA_FILE") or None)

        @app.post("/webhooks/paypal")
        async def paypal_webhook(request: Request) -> Any:
            body = await request.body()
            try:
                paypal.verify(request.headers, body)
            except InvalidSignature as exc:
                return JSONResponse({"error": "InvalidSignature", "detail": str(exc)}, 400)
            return {"status": "ok"}

    if os.environ.get("PROVISIONER_BRAINTREE_PUBLIC_KEY"):
        gateway = BraintreeVerifier("sandbox", os.environ["PROVISIONER_BRAINTREE_MERCHANT_ID"],
                                    os.environ["PROVISIONER_BRAINTREE_PUBLIC_KEY"],
                                    os.environ["PROVISIONER_BRAINTREE_PRIVATE_KEY"]).gateway

        @app.post("/webhooks/braintree")
        async def braintree_webhook(request: Request) -> Any:
            try:
                gateway.webhook_notification.parse(*form_fields(await request.body()))
            except InvalidSignatureError as exc:
                return JSONResponse({"error": "InvalidSignature", "detail": str(exc)}, 400)
            return {"status": "ok"}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
