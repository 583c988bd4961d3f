"""Ingest test fixtures (the shared servers come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from ingest_fake_core import FakeCore, serve_fake_core
from ingest_harness import free_tcp_port


@pytest.fixture
async def fake_core() -> AsyncIterator[FakeCore]:
    async with serve_fake_core(FakeCore(), free_tcp_port()) as core:
        yield core


@pytest.fixture
async def isolated_redis_prefix(redis_url: str, redis_prefix: str) -> AsyncIterator[str]:
    """``redis_prefix``, plus removal of every key written under it when the test ends."""
    from redis.asyncio import Redis

    yield redis_prefix
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
