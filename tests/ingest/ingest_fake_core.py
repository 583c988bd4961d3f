"""A small, real HTTP peer that speaks core's side of contract.md §1–§2, for the forwarder tests.

It verifies every request the way core must (bearer token, HMAC over the raw body, X-Timestamp window)
and records what it accepted. Tests script failures by queueing status codes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from chargeghar_protocol.signing import SignatureError, verify_request_signature
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SERVICE_EMAIL = "ingest@test.local"
SERVICE_PASSWORD = "service-password"
HMAC_SECRET = "test-hmac-secret"


def fake_jwt(lifetime_s: float) -> str:
    """Shaped like a JWT (the ingest reads ``exp`` only); the signature part is random."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    header = part({"alg": "HS256", "typ": "JWT"})
    claims = part({"sub": "ingest", "exp": int(time.time() + lifetime_s), "jti": uuid.uuid4().hex})
    return f"{header}.{claims}.{uuid.uuid4().hex}"


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeCore:
    token_lifetime_s: float = 3600
    valid_tokens: set[str] = field(default_factory=set)
    logins: int = 0
    refreshes: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)
    # Status codes answered by the next data requests (whole request), before normal processing.
    scripted_statuses: deque[int] = field(default_factory=deque)
    # Per-event answers inside a batch, by event_id: a status code to answer for that event (once).
    scripted_item_statuses: dict[str, int] = field(default_factory=dict)
    # Seconds to sleep before answering data requests (timeouts).
    delay_s: float = 0.0
    # Events core fails with a 500 every time (a poison event), alone or as their item of a batch.
    poison_event_ids: set[str] = field(default_factory=set)
    # A core without per-event isolation: a batch carrying a poison event fails as a whole (500).
    poison_fails_whole_batch: bool = False
    # While set, every data request is answered with this status (core broken or down for everything).
    fail_everything_with: int | None = None
    base_url: str = ""
    seen_event_ids: set[str] = field(default_factory=set)

    def revoke_tokens(self) -> None:
        self.valid_tokens.clear()

    @property
    def accepted_ids(self) -> list[str]:
        return [str(e.get("event_id")) for e in self.accepted]

    def build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/admin/login")
        async def login(request: Request) -> JSONResponse:
            body = await request.json()
            if body.get("email") != SERVICE_EMAIL or body.get("password") != SERVICE_PASSWORD:
                return JSONResponse(
                    {"success": False, "message": "bad credentials", "error": "UNAUTHORIZED"}, 401
                )
            self.logins += 1
            return self._tokens("Admin login successful")

        @app.post("/api/auth/refresh")
        async def refresh(request: Request) -> JSONResponse:
            self.refreshes += 1
            return self._tokens("refreshed")

        @app.post("/api/internal/stations/data")
        async def data(request: Request) -> JSONResponse:
            refusal = await self._check(request)
            if refusal is not None:
                return refusal
            event = json.loads(await request.body())
            if str(event.get("event_id")) in self.poison_event_ids:
                return JSONResponse({"success": False, "message": "poison", "error": "SYNC_ERROR"}, 500)
            self._accept(event)
            return JSONResponse({"success": True, "message": "ok", "data": {"duplicate": False}})

        @app.post("/api/internal/stations/data/batch")
        async def batch(request: Request) -> JSONResponse:
            refusal = await self._check(request)
            if refusal is not None:
                return refusal
            events = json.loads(await request.body())["events"]
            if self.poison_fails_whole_batch and any(
                str(e.get("event_id")) in self.poison_event_ids for e in events
            ):
                return JSONResponse({"success": False, "message": "poison", "error": "SYNC_ERROR"}, 500)
            results = []
            # Like core: after a retryable (5xx) failure of a station's event, that station's later
            # events in the batch are not attempted (503), so they cannot overtake the failed one.
            held_back: set[str] = set()
            for index, event in enumerate(events):
                station = str(event.get("device", {}).get("imei"))
                if station in held_back:
                    status = 503
                elif str(event.get("event_id")) in self.poison_event_ids:
                    status = 500
                else:
                    status = self.scripted_item_statuses.pop(str(event.get("event_id")), 200)
                if status >= 500:
                    held_back.add(station)
                if status == 200:
                    self._accept(event)
                results.append(
                    {
                        "index": index,
                        "event_id": event.get("event_id"),
                        "success": status == 200,
                        "status_code": status,
                        "message": "ok" if status == 200 else "scripted failure",
                    }
                )
            return JSONResponse({"success": True, "message": "batch", "data": {"results": results}})

        return app

    def _tokens(self, message: str) -> JSONResponse:
        access = fake_jwt(self.token_lifetime_s)
        self.valid_tokens.add(access)
        data = {
            "user_id": "svc",
            "access_token": access,
            "refresh_token": fake_jwt(86400),
            "user": {"id": "svc"},
        }
        return JSONResponse({"success": True, "message": message, "data": data})

    def _accept(self, event: dict[str, Any]) -> None:
        event_id = str(event.get("event_id"))
        if event_id in self.seen_event_ids:
            return  # duplicate: answered 200, applied once (contract §2 rule 5)
        self.seen_event_ids.add(event_id)
        self.accepted.append(event)

    async def _check(self, request: Request) -> JSONResponse | None:
        body = await request.body()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        self.requests.append(ReceivedRequest(request.url.path, dict(request.headers), parsed))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return JSONResponse({"success": False, "message": "no token", "error": "UNAUTHORIZED"}, 401)
        try:
            verify_request_signature(
                HMAC_SECRET, body, request.headers.get("x-timestamp"), request.headers.get("x-signature")
            )
        except SignatureError as exc:
            return JSONResponse(
                {"success": False, "message": exc.message, "error": exc.code}, exc.http_status
            )
        if self.fail_everything_with is not None:
            status = self.fail_everything_with
            return JSONResponse({"success": False, "message": "down", "error": "SCRIPTED"}, status)
        if self.scripted_statuses:
            status = self.scripted_statuses.popleft()
            return JSONResponse({"success": False, "message": "scripted", "error": "SCRIPTED"}, status)
        return None


@asynccontextmanager
async def serve_fake_core(core: FakeCore, port: int) -> AsyncIterator[FakeCore]:
    config = uvicorn.Config(
        core.build_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("fake core did not start")
        await asyncio.sleep(0.02)
    core.base_url = f"http://127.0.0.1:{port}"
    try:
        yield core
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
