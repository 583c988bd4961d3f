"""Power-bank rules: which model a serial number is."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

DEFAULT_MODEL = "STANDARD"
DEFAULT_CAPACITY_MAH = 5000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    model: str
    capacity_mah: int


DEFAULT_MODEL_SPEC = ModelSpec(DEFAULT_MODEL, DEFAULT_CAPACITY_MAH)


def resolve_model(serial_number: str, prefixes: Sequence[tuple[str, str, int]]) -> ModelSpec:
    """The longest matching serial prefix wins; no match gives the default model."""
    best: tuple[str, str, int] | None = None
    for prefix, model, capacity in prefixes:
        if serial_number.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, model, capacity)
    if best is None:
        return DEFAULT_MODEL_SPEC
    return ModelSpec(best[1], best[2])


class ModelCatalog:
    """The serial-prefix table, cached in the process for ``ttl_s``: it changes rarely, and reading it for
    every snapshot would cost a query on the hot path. Creating a mapping through the API invalidates the
    cache of the process that served it; other replicas pick it up within ``ttl_s``."""

    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._prefixes: list[tuple[str, str, int]] | None = None
        self._loaded_at = 0.0

    async def prefixes(
        self, load: Callable[[], Awaitable[list[tuple[str, str, int]]]]
    ) -> list[tuple[str, str, int]]:
        if self._prefixes is None or self._clock() - self._loaded_at > self._ttl_s:
            self._prefixes = await load()
            self._loaded_at = self._clock()
        return self._prefixes

    def invalidate(self) -> None:
        self._prefixes = None
