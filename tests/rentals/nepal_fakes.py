"""Fake eSewa and Khalti servers for the payments tests: they answer like the documented APIs
(developer.esewa.com.np "Epay-V2", docs.khalti.com "Web Checkout (KPG-2)") and record what they were asked."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from chargeghar_core.payments.nepal import esewa_signature, paisa_to_rupees
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ESEWA_UAT_SECRET = "8gBm/:&EnhH.1/q"  # published UAT key (Epay-V2 "HMAC/SHA256" and "Credentials" sections)
KHALTI_SECRET = "test-khalti-live-secret-key"
SIGNED_CALLBACK_FIELDS = (
    "transaction_code,status,total_amount,transaction_uuid,product_code,signed_field_names"
)


@dataclass
class FakeEsewa:
    """``GET /api/epay/transaction/status/``: the status of each transaction_uuid (PENDING unless set)."""

    statuses: dict[str, str] = field(default_factory=dict)
    ref_ids: dict[str, str] = field(default_factory=dict)
    calls: list[dict[str, str]] = field(default_factory=list)
    fail_next: int = 0  # answer "Service is currently unavailable" (HTTP 503) this many times first

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/epay/transaction/status/")
        async def status(request: Request) -> JSONResponse:
            params = dict(request.query_params)
            self.calls.append(params)
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"code": 0, "error_message": "Service is currently unavailable"}, 503)
            uuid_ = params["transaction_uuid"]
            state = self.statuses.get(uuid_, "PENDING")
            return JSONResponse(
                {
                    "product_code": params["product_code"],
                    "transaction_uuid": uuid_,
                    "total_amount": float(params["total_amount"]),
                    "status": state,
                    "ref_id": self.ref_ids.get(uuid_) if state != "PENDING" else None,
                }
            )

        return app


def esewa_success_data(
    transaction_uuid: str, amount_paisa: int, code: str = "000AWEO", secret: str = ESEWA_UAT_SECRET
) -> str:
    """The base64 ``data`` eSewa appends to success_url, shaped like the documented example."""
    fields: dict[str, Any] = {
        "transaction_code": code,
        "status": "COMPLETE",
        "total_amount": f"{paisa_to_rupees(amount_paisa)}.0"
        if amount_paisa % 100 == 0
        else paisa_to_rupees(amount_paisa),
        "transaction_uuid": transaction_uuid,
        "product_code": "EPAYTEST",
        "signed_field_names": SIGNED_CALLBACK_FIELDS,
    }
    fields["signature"] = esewa_signature(secret, fields, fields["signed_field_names"])
    return base64.b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode()


@dataclass
class FakeKhalti:
    """``/api/v2/epayment/initiate/``, ``/api/v2/epayment/lookup/`` and the refund API, with ``Key`` auth."""

    initiated: dict[str, dict[str, Any]] = field(default_factory=dict)  # pidx -> initiate body
    statuses: dict[str, str] = field(default_factory=dict)  # pidx -> lookup status (Initiated unless set)
    lookups: list[str] = field(default_factory=list)
    refunds: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        def authorised(request: Request) -> bool:
            return request.headers.get("authorization") == f"Key {KHALTI_SECRET}"

        @app.post("/api/v2/epayment/initiate/")
        async def initiate(request: Request) -> JSONResponse:
            if not authorised(request):
                return JSONResponse({"detail": "Invalid token.", "status_code": 401}, 401)
            body = await request.json()
            if int(body["amount"]) < 1000:
                return JSONResponse(
                    {
                        "amount": ["Amount should be greater than Rs. 100, that is 1000 paisa."],
                        "error_key": "validation_error",
                    },
                    400,
                )
            pidx = uuid.uuid4().hex[:22]
            self.initiated[pidx] = body
            return JSONResponse(
                {
                    "pidx": pidx,
                    "payment_url": f"https://test-pay.khalti.com/?pidx={pidx}",
                    "expires_at": "2023-05-25T16:26:16.471649+05:45",
                    "expires_in": 1800,
                }
            )

        @app.post("/api/v2/epayment/lookup/")
        async def lookup(request: Request) -> JSONResponse:
            if not authorised(request):
                return JSONResponse({"detail": "Invalid token.", "status_code": 401}, 401)
            pidx = (await request.json())["pidx"]
            self.lookups.append(pidx)
            if pidx not in self.initiated:
                return JSONResponse({"detail": "Not found.", "error_key": "validation_error"}, 404)
            state = self.statuses.get(pidx, "Initiated")
            paid = state in ("Completed", "Refunded", "Partially Refunded")
            body = {
                "pidx": pidx,
                "total_amount": int(self.initiated[pidx]["amount"]),
                "status": state,
                "transaction_id": f"T{pidx[:12]}" if paid else None,
                "fee": 0,
                "refunded": state == "Refunded",
            }
            return JSONResponse(body, 400 if state in ("Expired", "User canceled") else 200)

        @app.post("/api/merchant-transaction/{transaction_id}/refund/")
        async def refund(transaction_id: str, request: Request) -> JSONResponse:
            if not authorised(request):
                return JSONResponse({"detail": "Invalid token.", "status_code": 401}, 401)
            self.refunds.append((transaction_id, await request.json()))
            return JSONResponse({"detail": "Transaction refund successful."})

        return app
