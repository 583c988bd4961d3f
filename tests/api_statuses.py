"""Every status an operation answers in the test suite must be documented for it in the app's OpenAPI.

:class:`StatusRecorder` wraps ``httpx.ASGITransport`` (every API test talks to the apps through it) and
records ``(method, path, status)`` of each response from core's and the ingest's apps. At the end of the
session each record is matched to its operation (path template + method, in routing order) and checked
against that operation's documented responses. Only what ran is checked, so a subset of the suite works.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# Apps whose OpenAPI is checked (the titles set by the services' create_app); test doubles are left out.
CHECKED_TITLES = frozenset({"ChargeGhar core", "ChargeGhar ingest"})
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    documented: frozenset[str]


def operations_of(spec: dict[str, Any]) -> list[Operation]:
    """The document's operations in routing order (FastAPI lists paths in the order routes were added)."""
    found: list[Operation] = []
    for template, item in spec.get("paths", {}).items():
        # Path parameters match one segment, as Starlette's default ``str`` convertor does.
        pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
        for method, operation in item.items():
            if method in HTTP_METHODS:
                found.append(Operation(method.upper(), template, pattern, frozenset(operation["responses"])))
    return found


def find_operation(operations: list[Operation], method: str, path: str) -> Operation | None:
    """The operation the router would pick: the first whose path matches and that has this method."""
    for operation in operations:
        if operation.method == method and operation.pattern.match(path):
            return operation
    return None


def is_documented(operation: Operation, status: int) -> bool:
    code = str(status)
    return (
        code in operation.documented
        or f"{code[0]}XX" in operation.documented
        or "default" in (operation.documented)
    )


@dataclass
class StatusRecorder:
    """Records responses of the checked apps; :meth:`undocumented` lists what their OpenAPI leaves out."""

    seen: Counter[tuple[str, str, str, int]] = field(default_factory=Counter)
    apps: dict[str, Any] = field(default_factory=dict)
    _original: Callable[..., Awaitable[httpx.Response]] | None = None

    def record(self, app: Any, method: str, path: str, status: int) -> None:
        title = getattr(app, "title", None)
        if title not in CHECKED_TITLES or not callable(getattr(app, "openapi", None)):
            return
        self.apps.setdefault(title, app)
        self.seen[(title, method.upper(), path, status)] += 1

    def install(self) -> None:
        original = httpx.ASGITransport.handle_async_request
        recorder = self

        async def handle_async_request(
            transport: httpx.ASGITransport, request: httpx.Request
        ) -> httpx.Response:
            response = await original(transport, request)
            recorder.record(transport.app, request.method, request.url.path, response.status_code)
            return response

        self._original = original
        httpx.ASGITransport.handle_async_request = handle_async_request  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            httpx.ASGITransport.handle_async_request = self._original  # type: ignore[method-assign]
            self._original = None

    def undocumented(self) -> list[str]:
        """One line per (operation, status) answered in the suite but not documented for that operation."""
        operations = {title: operations_of(app.openapi()) for title, app in self.apps.items()}
        problems: Counter[tuple[str, str, str, int]] = Counter()
        documented_as: dict[tuple[str, str, str, int], list[str]] = {}
        for (title, method, path, status), count in self.seen.items():
            operation = find_operation(operations[title], method, path)
            if operation is None or is_documented(operation, status):
                continue  # no operation: an unknown path or method (404/405), not part of the contract
            key = (title, method, operation.template, status)
            problems[key] += count
            documented_as[key] = sorted(operation.documented)
        return [
            f"{title}: {method} {template} answered {status} ({count}x), documented: "
            f"{', '.join(documented_as[(title, method, template, status)])}"
            for (title, method, template, status), count in sorted(problems.items())
        ]
