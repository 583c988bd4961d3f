"""Paging of console tables: ``Pager`` knows the window and builds page links that keep the filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl, urlencode

from fastapi import Query
from starlette.datastructures import URL

PageNumber = Annotated[int, Query(ge=1, le=100_000)]


@dataclass(frozen=True, slots=True)
class Pager:
    page: int
    page_size: int
    total: int
    url: URL

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def first_row(self) -> int:
        return 0 if self.total == 0 else self.offset + 1

    @property
    def last_row(self) -> int:
        return min(self.total, self.offset + self.page_size)

    def link(self, page: int) -> str:
        """This page's URL with ``page`` replaced and every other query parameter (filters) kept."""
        params = [
            (key, value) for key, value in parse_qsl(self.url.query, keep_blank_values=True) if key != "page"
        ]
        params.append(("page", str(page)))
        return f"{self.url.path}?{urlencode(params)}"
