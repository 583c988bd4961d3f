"""Posting to a wallet: every balance change is one ledger row, applied at most once per idempotency key.

Each posting locks the wallet first, then checks the key and the balance, then writes the balance and the
ledger row — all in the caller's transaction — so concurrent postings to one wallet queue up instead of
losing updates, and a retried operation (same key) changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import CoreError
from chargeghar_core.payments.models import LedgerEntry, LedgerKind
from chargeghar_core.payments.repository import WalletRepository

logger = structlog.get_logger(__name__)

DEFAULT_CURRENCY = "NPR"


class InsufficientFunds(CoreError):
    status_code = 402
    code = "INSUFFICIENT_FUNDS"
    default_message = "Not enough money in the wallet"


@dataclass(frozen=True, slots=True)
class Posting:
    applied: bool  # False: the key had been posted before (or nothing could be collected)
    amount_paisa: int  # signed amount of the ledger row (the earlier one when not applied)
    balance_after_paisa: int


class WalletService:
    def __init__(self, session: AsyncSession, currency: str = DEFAULT_CURRENCY) -> None:
        self.session = session
        self.wallets = WalletRepository(session)
        self.currency = currency

    async def balance(self, user_id: uuid.UUID) -> int:
        return await self.wallets.balance(user_id)

    async def credit(
        self,
        user_id: uuid.UUID,
        amount_paisa: int,
        kind: LedgerKind,
        key: str,
        *,
        rental_id: uuid.UUID | None = None,
        payment_id: uuid.UUID | None = None,
        note: str = "",
    ) -> Posting:
        if amount_paisa <= 0:
            raise ValueError("a credit must be positive")
        return await self._post(user_id, amount_paisa, kind, key, rental_id, payment_id, note, partial=False)

    async def debit(
        self,
        user_id: uuid.UUID,
        amount_paisa: int,
        kind: LedgerKind,
        key: str,
        *,
        rental_id: uuid.UUID | None = None,
        payment_id: uuid.UUID | None = None,
        note: str = "",
        allow_partial: bool = False,
    ) -> Posting:
        """Take ``amount`` (positive) from the wallet. Without ``allow_partial`` a short balance raises
        :class:`InsufficientFunds`; with it, as much as there is is taken (possibly nothing)."""
        if amount_paisa <= 0:
            raise ValueError("a debit amount must be positive")
        return await self._post(
            user_id, -amount_paisa, kind, key, rental_id, payment_id, note, partial=allow_partial
        )

    async def _post(
        self,
        user_id: uuid.UUID,
        amount: int,
        kind: LedgerKind,
        key: str,
        rental_id: uuid.UUID | None,
        payment_id: uuid.UUID | None,
        note: str,
        *,
        partial: bool,
    ) -> Posting:
        await self.wallets.ensure(user_id, self.currency)
        balance = await self.wallets.lock(user_id)
        assert balance is not None  # ensure() created it in this transaction or before
        earlier = await self.wallets.entry_by_key(key)
        if earlier is not None:
            return Posting(False, earlier.amount_paisa, balance)
        if balance + amount < 0:
            if not partial:
                raise InsufficientFunds(
                    details={"balance_paisa": balance, "required_paisa": -amount},
                )
            amount = -balance
        if amount == 0:
            return Posting(False, 0, balance)
        new_balance = await self.wallets.add_to_balance(user_id, amount)
        await self.wallets.add_entry(
            LedgerEntry(
                id=uuid.uuid4(),
                user_id=user_id,
                kind=kind.value,
                amount_paisa=amount,
                balance_after_paisa=new_balance,
                rental_id=rental_id,
                payment_id=payment_id,
                idempotency_key=key,
                note=note[:300],
                created_at=utcnow(),
            )
        )
        logger.info("wallet_posted", user_id=str(user_id), kind=kind.value, amount=amount, key=key)
        return Posting(True, amount, new_balance)
