"""Core's OpenAPI tells the truth: the error envelope and the real statuses, security schemes, summaries for
people, examples, and docs pages that work without internet."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_statuses import StatusRecorder, find_operation, operations_of
from chargeghar_core.app import create_app
from chargeghar_core.iot.schemas import LEGACY_FULL_EXAMPLE
from chargeghar_core.kit.openapi import api_routes
from core_support import make_settings
from fastapi import FastAPI

ASSET_REFERENCE = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture(scope="module")
def app() -> FastAPI:
    # The document and the docs pages need no database: the app's lifespan is not started.
    return create_app(make_settings("sqlite+aiosqlite:///unused-by-these-tests.sqlite3"))


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://core.test"
    ) as client:
        yield client


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_everything_from_core_itself(http: httpx.AsyncClient, page: str) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://|//cdn|fonts\.googleapis", html), "the page must not need another host"
    references = [next(group for group in match if group) for match in ASSET_REFERENCE.findall(html)]
    assets = [ref for ref in references if ref.endswith((".js", ".css", ".png"))]
    assert len(assets) >= (3 if page == "/docs" else 2), references
    assert "/openapi.json" in references
    for asset in [*assets, "/openapi.json"]:
        answer = await http.get(asset)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 100, asset


def test_no_fastapi_422_anywhere_and_errors_are_the_envelope(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(spec) and "ValidationError" not in spec["components"]["schemas"]
    for method, path, op in _operations(spec):
        responses = op["responses"]
        assert "422" not in responses, (method, path)
        # The request guard checks the path and query of every request.
        assert "400" in responses, (method, path)
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
                assert response["description"] not in ("", "Error"), (method, path, status)
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["required"]) == {"message", "error"}


def test_protected_operations_document_401_403_and_their_scheme(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert {schemes["hmacSignature"]["name"], schemes["hmacTimestamp"]["name"]} == {
        "X-Signature",
        "X-Timestamp",
    }
    protected = 0
    for method, path, op in _operations(spec):
        security = op.get("security", [])
        if any("bearerAuth" in requirement for requirement in security):
            protected += 1
            assert {"401", "403"} <= set(op["responses"]), (method, path)
        if path.startswith("/api/internal/"):
            assert security == [{"bearerAuth": [], "hmacSignature": [], "hmacTimestamp": []}]
            assert {"401", "403", "429"} <= set(op["responses"])
            assert "413" not in op["responses"]  # the internal endpoints read their body themselves
        elif method in ("POST", "PUT", "PATCH", "DELETE"):
            assert "413" in op["responses"], (method, path)
    assert protected >= 34
    webhook = spec["paths"]["/api/payments/webhooks/{provider_name}"]["post"]
    assert webhook["security"] == [{"webhookSignature": []}]
    event_id = spec["paths"]["/api/internal/stations/data"]["post"]["parameters"]
    assert [p["name"] for p in event_id if p["in"] == "header"] == ["X-Event-Id"]


def test_database_backed_operations_document_503(app: FastAPI, spec: dict[str, Any]) -> None:
    for method, path, op in _operations(spec):
        if path != "/health":
            assert "503" in op["responses"], (method, path)
    assert "503" not in spec["paths"]["/health"]["get"]["responses"]


def test_every_operation_has_a_summary_written_for_people(app: FastAPI, spec: dict[str, Any]) -> None:
    routes = list(api_routes(app.routes))
    assert len(routes) == len(_operations(spec)) == 87
    for route in routes:
        generated = route.name.replace("_", " ").title()  # FastAPI's fallback ("Me", "Set Status")
        for method in route.methods:
            summary = spec["paths"][route.path_format][method.lower()].get("summary", "")
            assert summary and summary != generated, (method, route.path_format, summary)


def test_main_endpoints_carry_examples(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    login = paths["/api/admin/login"]["post"]
    assert login["requestBody"]["content"]["application/json"]["schema"]["examples"]
    schemas = spec["components"]["schemas"]
    assert schemas["TokenEnvelope"]["examples"][0]["data"]["user"]["role"] == "service"
    assert schemas["StationSummary"]["examples"]
    start = paths["/api/rentals"]["post"]
    assert schemas["StartRentalRequest"]["examples"][0]["station_serial"]
    assert start["responses"]["201"]["content"]["application/json"]["example"]["data"]["status"] == "ACTIVE"
    assert start["responses"]["409"]["content"]["application/json"]["example"]["success"] is False
    internal = paths["/api/internal/stations/data"]["post"]["requestBody"]["content"]["application/json"]
    assert internal["examples"]["full (legacy bridge)"]["value"] == LEGACY_FULL_EXAMPLE


def test_status_recorder_flags_an_undocumented_status(app: FastAPI, spec: dict[str, Any]) -> None:
    operations = operations_of(spec)
    # Routing order: the literal path wins over the path parameter declared after it.
    active = find_operation(operations, "GET", "/api/rentals/active")
    assert active is not None and active.template == "/api/rentals/active"
    one = find_operation(operations, "GET", "/api/rentals/0b8f6c1e-8f0d-4f7e-9a55-2b1d1e0c9a77")
    assert one is not None and one.template == "/api/rentals/{rental_id}"
    assert find_operation(operations, "DELETE", "/api/stations") is None

    recorder = StatusRecorder()
    recorder.record(app, "GET", "/api/stations/KTM-01", 404)
    recorder.record(app, "GET", "/api/stations/KTM-01", 409)
    recorder.record(app, "GET", "/no/such/route", 404)
    recorder.record(FastAPI(title="a test double"), "GET", "/api/stations", 418)
    assert recorder.undocumented() == [
        "ChargeGhar core: GET /api/stations/{serial_number} answered 409 (1x), documented: 200, 400, 404, 503"
    ]


async def test_the_session_recorder_sees_every_api_response(
    documented_statuses: StatusRecorder, http: httpx.AsyncClient
) -> None:
    """The suite-wide check (tests/conftest.py) is only as good as its view of the responses."""
    response = await http.get("/health", params={"probe": "\x00"})
    assert response.status_code == 400  # the request guard refuses NUL in the query
    assert documented_statuses.seen[("ChargeGhar core", "GET", "/health", 400)] >= 1
    assert not any("GET /health " in line for line in documented_statuses.undocumented())
