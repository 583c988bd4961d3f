"""OpenAPI that tells the truth, and the docs pages served from packaged assets.

- Every error is the contract envelope (``ErrorEnvelope``). :func:`errors` declares a route's own answers;
  answers that come from a dependency (bearer token → 401, role → 403, database session → 503) are declared
  once on the dependency with :func:`answers` and added to every route that uses it; answers of the
  middleware (400 for an unstorable path/query/body, 413 for an oversized body) are added to every route
  they apply to.
- FastAPI's default ``422 {"detail": [...]}`` is removed: core's handler answers those as 400
  ``VALIDATION_ERROR`` envelopes.
- ``/docs`` and ``/redoc`` load Swagger UI / ReDoc from the ``fastapi-offline`` wheel, so they work on a
  machine without internet (FastAPI's defaults load them from a CDN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

from chargeghar_protocol.contract import ErrorEnvelope
from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

ERROR_SCHEMA_REF = "#/components/schemas/ErrorEnvelope"

# Security schemes (components.securitySchemes): one per way of proving who calls.
BEARER_SCHEME = "bearerAuth"
HMAC_SIGNATURE_SCHEME = "hmacSignature"
HMAC_TIMESTAMP_SCHEME = "hmacTimestamp"
WEBHOOK_SIGNATURE_SCHEME = "webhookSignature"

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "Access token (HS256 JWT, 60 min by default). Staff and service accounts get theirs from "
            "`POST /api/admin/login`, renters from `POST /api/renters/login`; refresh with "
            "`POST /api/auth/refresh` / `POST /api/renters/refresh`. The role in the token decides what it "
            "may call: a renter token on a staff route is a 403."
        ),
    },
    HMAC_SIGNATURE_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": (
            "`base64(HMAC-SHA256(key = shared secret, msg = raw body bytes + ASCII(X-Timestamp)))`, standard "
            "base64 with padding (contract.md §2). Computed over the exact bytes sent."
        ),
    },
    HMAC_TIMESTAMP_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Timestamp",
        "description": "Unix seconds, decimal; refused when more than 300 s (setting) from core's clock.",
    },
    WEBHOOK_SIGNATURE_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Razorpay-Signature",
        "description": "Hex HMAC-SHA256 of the raw webhook body with the provider's webhook secret.",
    },
}

# The HMAC-signed internal endpoints: bearer token AND signature AND timestamp.
INTERNAL_SECURITY: list[dict[str, list[str]]] = [
    {BEARER_SCHEME: [], HMAC_SIGNATURE_SCHEME: [], HMAC_TIMESTAMP_SCHEME: []}
]

# Generic wording per status; a route or dependency names its own codes when it knows them.
_GENERIC: dict[int, tuple[str, str, str]] = {
    400: (
        "VALIDATION_ERROR",
        "Bad input: VALIDATION_ERROR (`details` maps field paths to messages), INVALID_JSON or INVALID_INPUT",
        "Request validation failed",
    ),
    401: ("UNAUTHORIZED", "Missing, malformed or expired credentials", "Authentication required"),
    402: (
        "INSUFFICIENT_FUNDS",
        "Payment required: wallet balance too low or unpaid dues",
        "Payment required",
    ),
    403: ("FORBIDDEN", "The caller may not do this", "Not allowed"),
    404: ("NOT_FOUND", "The named resource does not exist", "Not found"),
    409: ("CONFLICT", "Conflict with the current state", "Conflict with the current state"),
    413: (
        "PAYLOAD_TOO_LARGE",
        "PAYLOAD_TOO_LARGE: body above the configured limit (`CORE_MAX_BODY_BYTES`, 1 MiB by default)",
        "Request body larger than 1048576 bytes",
    ),
    429: ("RATE_LIMITED", "RATE_LIMITED: retry after the `Retry-After` header", "Rate limit exceeded"),
    500: ("INTERNAL_ERROR", "Unexpected failure", "Internal server error"),
    502: ("BAD_GATEWAY", "An upstream service refused or failed", "Bad gateway"),
    503: (
        "SERVICE_UNAVAILABLE",
        "SERVICE_UNAVAILABLE: a dependency is down; retry after the `Retry-After` header",
        "A service this request needs is unavailable; retry later",
    ),
}

ErrorSpec = int | tuple[int, str] | tuple[int, str, str]


def error_response(status: int, code: str | None = None, description: str | None = None) -> dict[str, Any]:
    """One ``responses`` entry: the envelope schema, a description for people and an example body."""
    generic_code, generic_description, message = _GENERIC.get(status, ("ERROR", "Error", "Error"))
    return {
        "model": ErrorEnvelope,
        "description": description or generic_description,
        "content": {
            "application/json": {
                "example": {"success": False, "message": message, "error": code or generic_code}
            }
        },
    }


def errors(*specs: ErrorSpec) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: ``errors(404, (409, "SERIAL_TAKEN", "Serial used by another station"))``.

    An item is a status, ``(status, code)`` or ``(status, code, description)``."""
    declared: dict[int | str, dict[str, Any]] = {}
    for spec in specs:
        if isinstance(spec, int):
            declared[spec] = error_response(spec)
        elif len(spec) == 2:
            declared[spec[0]] = error_response(spec[0], spec[1])
        else:
            declared[spec[0]] = error_response(spec[0], spec[1], spec[2])
    return declared


# Answers of dependencies, keyed by the dependency callable (see :func:`answers`).
_DEPENDENCY_ANSWERS: dict[Callable[..., Any], dict[int | str, dict[str, Any]]] = {}

DependencyT = TypeVar("DependencyT", bound=Callable[..., Any])


def answers(*specs: ErrorSpec) -> Callable[[DependencyT], DependencyT]:
    """Mark a dependency with the errors it can answer; every route using it documents them."""

    def mark(dependency: DependencyT) -> DependencyT:
        _DEPENDENCY_ANSWERS[dependency] = errors(*specs)
        return dependency

    return mark


def _dependency_calls(dependant: Dependant) -> Iterable[Callable[..., Any]]:
    for child in dependant.dependencies:
        if child.call is not None:
            yield child.call
        yield from _dependency_calls(child)


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """The documented API routes. FastAPI ≥ 0.12x keeps included routers as nested entries of
    ``app.routes`` and flattens them with ``iter_route_contexts``; older versions list the routes flat."""
    flatten = getattr(fastapi_routing, "iter_route_contexts", None)
    for route in flatten(routes) if flatten is not None else routes:
        if getattr(route, "include_in_schema", False) and isinstance(
            getattr(route, "dependant", None), Dependant
        ):
            yield route


def _as_openapi(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ``responses`` entry built by :func:`error_response`, as it appears in the document."""
    content = {
        "application/json": {**entry["content"]["application/json"], "schema": {"$ref": ERROR_SCHEMA_REF}}
    }
    return {"description": entry["description"], "content": content}


def _is_default_422(response: Mapping[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def refine_openapi(
    schema: dict[str, Any], routes: Sequence[BaseRoute], *, internal_prefixes: tuple[str, ...] = ()
) -> None:
    """Add the answers that do not come from a route's own declaration, drop FastAPI's 422 (in place).

    Routes under ``internal_prefixes`` need the bearer token *and* the HMAC signature, and read their body
    themselves (the request guard's 413 does not apply to them)."""
    components = schema.setdefault("components", {})
    component_schemas = components.setdefault("schemas", {})
    component_schemas.setdefault(
        "ErrorEnvelope", ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    components["securitySchemes"] = {**components.get("securitySchemes", {}), **SECURITY_SCHEMES}
    for route in api_routes(routes):
        path_item = schema["paths"].get(route.path_format, {})
        implied: dict[int | str, dict[str, Any]] = {
            # The request guard checks the path and query of every request (NUL, lone surrogates).
            400: error_response(400),
        }
        for call in _dependency_calls(route.dependant):
            implied.update(_DEPENDENCY_ANSWERS.get(call, {}))
        for method in route.methods:
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            extra = dict(implied)
            internal = route.path_format.startswith(internal_prefixes)
            if internal:
                operation["security"] = INTERNAL_SECURITY
            elif method not in ("GET", "HEAD", "OPTIONS"):
                extra[413] = error_response(413)
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if "422" in responses and _is_default_422(responses["422"]):
                del responses["422"]
            for status, entry in extra.items():
                responses.setdefault(str(status), _as_openapi(entry))
            operation["responses"] = dict(sorted(responses.items()))
    # FastAPI's validation-error models are unused once the 422 entries are gone.
    for unused in ("HTTPValidationError", "ValidationError"):
        component_schemas.pop(unused, None)


def install_openapi(app: FastAPI, *, internal_prefixes: tuple[str, ...] = ()) -> None:
    """Replace ``app.openapi`` with one that refines FastAPI's document once and caches it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            refine_openapi(generate(), app.routes, internal_prefixes=internal_prefixes)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------- docs pages

DOCS_ASSETS_PATH = "/docs-assets"


def serve_docs_locally(app: FastAPI, *, openapi_url: str) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their JS/CSS from the ``fastapi-offline`` wheel.

    Create the app with ``docs_url=None, redoc_url=None``; no page references another host (FastAPI's
    defaults also pull a favicon and Google fonts)."""
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
