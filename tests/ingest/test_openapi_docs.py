"""The ingest's OpenAPI: signed command/ops API with schemas and security schemes, device answers in the
vendor envelope, summaries for people, and docs pages that work without internet."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chargeghar_ingest.app import create_app
from chargeghar_ingest.openapi import api_routes
from fastapi import FastAPI
from ingest_harness import make_settings

ASSET_REFERENCE = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url:\s*'([^']+)'""")
SIGNED = [
    {"hmacSignature": [], "hmacTimestamp": [], "serviceToken": []},
    {"hmacSignature": [], "hmacTimestamp": []},
]


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    # The document and the docs pages need no runtime: the lifespan is not started.
    return create_app(make_settings(tmp_path))


@pytest.fixture
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_everything_from_the_ingest_itself(http: httpx.AsyncClient, page: str) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    assert not re.search(r"https?://|//cdn|fonts\.googleapis", response.text)
    references = [next(group for group in match if group) for match in ASSET_REFERENCE.findall(response.text)]
    assets = [ref for ref in references if ref.endswith((".js", ".css", ".png"))]
    assert len(assets) >= (3 if page == "/docs" else 2), references
    for asset in [*assets, "/openapi.json"]:
        answer = await http.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 100, asset


def test_command_api_documents_its_body_signature_and_answers(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert {name: scheme["name"] for name, scheme in schemes.items()} == {
        "hmacSignature": "X-Signature",
        "hmacTimestamp": "X-Timestamp",
        "serviceToken": "X-Service-Token",
    }
    command = spec["paths"]["/internal/devices/{imei}/commands"]["post"]
    assert command["security"] == SIGNED
    body = command["requestBody"]["content"]["application/json"]
    properties = body["schema"]["properties"]
    assert {"cmd", "data", "io", "command_id", "timeout_s"} <= set(properties)
    assert "popup_sn" in properties["cmd"]["enum"] and properties["timeout_s"]["maximum"] == 120
    assert all(properties[name].get("description") for name in ("cmd", "data", "io", "command_id"))
    assert body["examples"]["eject a power bank"]["value"]["cmd"] == "popup_sn"
    responses = command["responses"]
    assert set(responses) == {"200", "400", "403", "409", "503"}
    assert responses["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }
    ok = spec["components"]["schemas"]["SuccessEnvelope_CommandResult_"]
    assert ok["properties"]["data"] == {"$ref": "#/components/schemas/CommandResult"}


def test_signed_ops_api_and_device_answers(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    redrive = paths["/internal/ops/redrive"]["post"]
    assert redrive["security"] == SIGNED
    assert {"ids", "station", "all_parked"} <= set(
        redrive["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    assert set(redrive["responses"]) == {"200", "400", "403"}
    dead_letters = paths["/internal/ops/dead-letters"]["get"]
    assert dead_letters["security"] == SIGNED
    # A non-integer limit is FastAPI's own 422 here, so it stays documented.
    assert {"200", "400", "403", "422"} == set(dead_letters["responses"])
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    upload = paths["/api/rentbox/upload/data"]["post"]
    assert set(upload["responses"]) == {"200", "400", "403", "413"}
    assert upload["responses"]["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeviceEnvelope"
    }
    # A plain str path parameter cannot fail validation: no 422 on the command route.
    assert "422" not in paths["/internal/devices/{imei}/commands"]["post"]["responses"]


def test_every_operation_has_a_summary_written_for_people(app: FastAPI, spec: dict[str, Any]) -> None:
    routes = list(api_routes(app.routes))
    assert routes
    for route in routes:
        generated = route.name.replace("_", " ").title()
        for method in route.methods:
            summary = spec["paths"][route.path_format][method.lower()].get("summary", "")
            assert summary and summary != generated, (method, route.path_format, summary)
