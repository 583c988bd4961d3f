"""Every query of the payments domain: wallets, ledger rows, top-up payments."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import dialect_name, insert_for, table_of, utcnow
from chargeghar_core.payments.models import LedgerEntry, Payment, PaymentStatus, Wallet


async def serialise_sqlite_writers(session: AsyncSession) -> None:
    """On SQLite, take the database write lock now, at the start of a read-then-write transaction.

    Core's SQLite transactions begin DEFERRED; one that reads and later writes fails at once with
    "database is locked" when another writer committed in between (WAL snapshot upgrade), instead of
    waiting. A no-op UPDATE as the first statement makes it queue behind the other writers (busy timeout).
    PostgreSQL needs nothing: its row locks do this per row.
    """
    if dialect_name(session) == "sqlite":
        await session.execute(text("UPDATE wallets SET version = version WHERE 0"))


class WalletRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure(self, user_id: uuid.UUID, currency: str) -> None:
        statement = (
            insert_for(self.session, table_of(Wallet))
            .values(user_id=user_id, balance_paisa=0, currency=currency, version=0, created_at=utcnow())
            .on_conflict_do_nothing()
        )
        await self.session.execute(statement)

    async def lock(self, user_id: uuid.UUID) -> int | None:
        """Take the wallet's write lock until the transaction ends and return its balance.

        An UPDATE is the portable lock: on PostgreSQL it holds the row lock (like SELECT … FOR UPDATE), on
        SQLite it takes the database write lock, so the read-check-write that follows cannot lose an update.
        """
        table = table_of(Wallet)
        result = await self.session.execute(
            update(table)
            .where(table.c.user_id == user_id)
            .values(version=table.c.version + 1, modified_at=utcnow())
            .returning(table.c.balance_paisa)
        )
        row = result.first()
        return None if row is None else int(row[0])

    async def add_to_balance(self, user_id: uuid.UUID, delta: int) -> int:
        table = table_of(Wallet)
        result = await self.session.execute(
            update(table)
            .where(table.c.user_id == user_id)
            .values(balance_paisa=table.c.balance_paisa + delta)
            .returning(table.c.balance_paisa)
        )
        return int(result.scalar_one())

    async def balance(self, user_id: uuid.UUID) -> int:
        value = await self.session.scalar(select(Wallet.balance_paisa).where(Wallet.user_id == user_id))
        return int(value or 0)

    async def entry_by_key(self, key: str) -> LedgerEntry | None:
        rows = await self.session.execute(select(LedgerEntry).where(LedgerEntry.idempotency_key == key))
        return rows.scalar_one_or_none()

    async def add_entry(self, entry: LedgerEntry) -> None:
        self.session.add(entry)
        await self.session.flush()

    async def entries(self, user_id: uuid.UUID, *, limit: int, offset: int) -> tuple[list[LedgerEntry], int]:
        query = select(LedgerEntry).where(LedgerEntry.user_id == user_id)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(
            query.order_by(LedgerEntry.created_at.desc(), LedgerEntry.id).limit(limit).offset(offset)
        )
        return list(rows.scalars()), int(total or 0)

    async def ledger_sum(self, user_id: uuid.UUID) -> int:
        value = await self.session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount_paisa), 0)).where(LedgerEntry.user_id == user_id)
        )
        return int(value or 0)


class PaymentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, payment: Payment) -> Payment:
        self.session.add(payment)
        await self.session.flush()
        return payment

    async def get(self, payment_id: uuid.UUID) -> Payment | None:
        return await self.session.get(Payment, payment_id, populate_existing=True)

    async def by_order(self, provider: str, order_id: str) -> Payment | None:
        rows = await self.session.execute(
            select(Payment)
            .where(Payment.provider == provider, Payment.provider_order_id == order_id)
            .execution_options(populate_existing=True)
        )
        return rows.scalar_one_or_none()

    async def mark_captured(
        self, payment_id: uuid.UUID, provider_payment_id: str, at: datetime, *, from_expired: bool = False
    ) -> bool:
        """CREATED → CAPTURED, once: False when it was captured (or failed) already.

        ``from_expired``: the provider itself confirmed the payment complete after we expired it (the renter
        paid in the last moment) — the money was taken, so it is credited all the same, still once."""
        table = table_of(Payment)
        sources = [PaymentStatus.CREATED.value]
        if from_expired:
            sources.append(PaymentStatus.EXPIRED.value)
        result = await self.session.execute(
            update(table)
            .where(table.c.id == payment_id, table.c.status.in_(sources))
            .values(
                status=PaymentStatus.CAPTURED.value,
                provider_payment_id=provider_payment_id,
                captured_at=at,
                modified_at=at,
            )
        )
        return bool(getattr(result, "rowcount", 0))

    async def mark_failed(self, payment_id: uuid.UUID, reason: str, at: datetime) -> bool:
        table = table_of(Payment)
        result = await self.session.execute(
            update(table)
            .where(table.c.id == payment_id, table.c.status == PaymentStatus.CREATED.value)
            .values(status=PaymentStatus.FAILED.value, failure_reason=reason[:300], modified_at=at)
        )
        return bool(getattr(result, "rowcount", 0))

    async def mark_expired(self, payment_id: uuid.UUID, reason: str, at: datetime) -> bool:
        table = table_of(Payment)
        result = await self.session.execute(
            update(table)
            .where(table.c.id == payment_id, table.c.status == PaymentStatus.CREATED.value)
            .values(status=PaymentStatus.EXPIRED.value, failure_reason=reason[:300], modified_at=at)
        )
        return bool(getattr(result, "rowcount", 0))

    async def mark_checked(self, payment_id: uuid.UUID, at: datetime) -> None:
        table = table_of(Payment)
        await self.session.execute(update(table).where(table.c.id == payment_id).values(checked_at=at))

    async def due_for_lookup(
        self, providers: list[str], *, created_before: datetime, checked_before: datetime, limit: int
    ) -> list[uuid.UUID]:
        """Top-ups still CREATED at a lookup provider, oldest first, not looked up recently."""
        rows = await self.session.execute(
            select(Payment.id)
            .where(
                Payment.status == PaymentStatus.CREATED.value,
                Payment.provider.in_(providers),
                Payment.created_at < created_before,
                (Payment.checked_at.is_(None)) | (Payment.checked_at < checked_before),
            )
            .order_by(Payment.created_at)
            .limit(limit)
        )
        return list(rows.scalars())

    async def history(self, user_id: uuid.UUID, *, limit: int, offset: int) -> tuple[list[Payment], int]:
        query = select(Payment).where(Payment.user_id == user_id)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await self.session.execute(
            query.order_by(Payment.created_at.desc(), Payment.id).limit(limit).offset(offset)
        )
        return list(rows.scalars()), int(total or 0)
