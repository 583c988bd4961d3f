"""Envelope and paging models shared by the API schemas of every domain."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field, field_validator

# Bounds of every paginated list: an unbounded page number overflows the SQL OFFSET (a 500 on PostgreSQL)
# and no client pages that deep; filter or search instead.
MAX_PAGE = 10_000
MAX_OFFSET = 1_000_000
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"1-based page, at most {MAX_PAGE}")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]

DataT = TypeVar("DataT")
ItemT = TypeVar("ItemT")


class Envelope(BaseModel, Generic[DataT]):
    success: bool = True
    message: str = "OK"
    data: DataT


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int = Field(ge=0)
    page: int = Field(ge=1)
    page_size: int = Field(ge=1)


def refuse_explicit_null(value: Any) -> Any:
    """For PATCH models: a field may be omitted (left unchanged) but not sent as ``null`` when its column
    cannot hold NULL. Use as an ``after`` validator; pydantic skips it for omitted fields (defaults)."""
    if value is None:
        raise ValueError("may be omitted but not null")
    return value


def non_null(*fields: str) -> Any:
    return field_validator(*fields)(refuse_explicit_null)
