"""The ingest's OpenAPI: its three kinds of answers, its security schemes, and local docs pages.

- Stations' HTTP calls answer the vendor envelope (``DeviceEnvelope``, ``code`` = HTTP status).
- The command API and the signed operations API answer the contract envelope (``ErrorEnvelope``) and are
  authenticated by the HMAC scheme of contract.md §3 (+ the service token when one is configured).
- ``/docs`` and ``/redoc`` load Swagger UI / ReDoc from the ``fastapi-offline`` wheel (no CDN).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from chargeghar_protocol.contract import DeviceEnvelope, ErrorEnvelope
from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

HMAC_SIGNATURE_SCHEME = "hmacSignature"
HMAC_TIMESTAMP_SCHEME = "hmacTimestamp"
SERVICE_TOKEN_SCHEME = "serviceToken"  # noqa: S105 - the scheme's name, not a secret

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    HMAC_SIGNATURE_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": (
            "`base64(HMAC-SHA256(key = shared secret, msg = raw body bytes + ASCII(X-Timestamp)))`, standard "
            "base64 with padding; the secret is `INGEST_CORE__HMAC_SECRET` (contract.md §3). A GET signs the "
            "empty body."
        ),
    },
    HMAC_TIMESTAMP_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Timestamp",
        "description": "Unix seconds, decimal; refused when more than 300 s from the ingest's clock.",
    },
    SERVICE_TOKEN_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Service-Token",
        "description": "Required in addition to the signature when `INGEST_COMMANDS__SERVICE_TOKEN` is set.",
    },
}

# Signature and timestamp, with or without the service token (it is only checked when configured).
SIGNED_SECURITY: list[dict[str, list[str]]] = [
    {HMAC_SIGNATURE_SCHEME: [], HMAC_TIMESTAMP_SCHEME: [], SERVICE_TOKEN_SCHEME: []},
    {HMAC_SIGNATURE_SCHEME: [], HMAC_TIMESTAMP_SCHEME: []},
]


def error_response(code: str, description: str) -> dict[str, Any]:
    """A ``responses`` entry in the contract envelope, with an example body."""
    return {
        "model": ErrorEnvelope,
        "description": description,
        "content": {
            "application/json": {"example": {"success": False, "message": description, "error": code}}
        },
    }


def device_response(status: int, description: str, example_message: str) -> dict[str, Any]:
    """A ``responses`` entry in the vendor envelope (the firmware reads ``code`` and ``msg``)."""
    example = {"code": status, "type": 0, "data": None, "msg": example_message, "time": 1762928776509}
    return {
        "model": DeviceEnvelope,
        "description": description,
        "content": {"application/json": {"example": example}},
    }


# The answers of the signature check, common to every signed route.
SIGNATURE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_response("INVALID_TIMESTAMP", "X-Timestamp is not an integer (INVALID_TIMESTAMP)"),
    403: error_response(
        "INVALID_SIGNATURE",
        "MISSING_HEADERS, INVALID_SIGNATURE (wrong signature or clock skew) or FORBIDDEN (service token)",
    ),
}

DEVICE_ERRORS: dict[int | str, dict[str, Any]] = {
    200: device_response(200, "Accepted: the event is in the spool (`data` per call)", "ok"),
    400: device_response(
        400,
        "Refused and kept as a dead letter: missing/unknown/implausible parameters or a bad frame",
        "missing parameter(s): rentboxSN",
    ),
    403: device_response(
        403,
        "The device `sign` does not match (sign policy `enforce`); at connect under provisioning `registry`: "
        "the IMEI is not approved (`device not registered`) or core's registry cannot be reached "
        "(`device registry unavailable`), so no credentials",
        "ERROR SIGN",
    ),
    413: device_response(413, "Body above `INGEST_DEVICE__MAX_BODY_BYTES`", "body larger than 16384 bytes"),
}


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    # FastAPI ≥ 0.12x nests included routers and flattens them with iter_route_contexts.
    flatten = getattr(fastapi_routing, "iter_route_contexts", None)
    for route in flatten(routes) if flatten is not None else routes:
        if getattr(route, "include_in_schema", False) and getattr(route, "dependant", None) is not None:
            yield route


def _cannot_fail_validation(route: Any) -> bool:
    """No body model and only path parameters of plain ``str``: FastAPI's 422 can never be answered."""
    dependant = route.dependant
    if route.body_field is not None or dependant.query_params or dependant.header_params:
        return False
    if dependant.cookie_params or dependant.dependencies:
        return False
    return all(param.field_info.annotation is str for param in dependant.path_params)


def refine_openapi(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> None:
    """Security schemes in; FastAPI's 422 out of the operations that can never answer it (in place)."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {**components.get("securitySchemes", {}), **SECURITY_SCHEMES}
    for route in api_routes(routes):
        if not _cannot_fail_validation(route):
            continue
        for method in route.methods:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation.get("responses", {}).pop("422", None)
    if "422" not in str(schema["paths"]):
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            refine_openapi(generate(), app.routes)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


DOCS_ASSETS_PATH = "/docs-assets"


def serve_docs_locally(app: FastAPI, *, openapi_url: str) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their JS/CSS/favicon from the ``fastapi-offline`` wheel.

    Create the app with ``docs_url=None, redoc_url=None``; no page references another host."""
    static = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(static)), name="docs-assets")
    favicon = f"{DOCS_ASSETS_PATH}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
