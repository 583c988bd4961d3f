"""The wallet ledger: every balance change is one append-only row; the rows always sum to the balance;
a key is applied at most once; concurrent postings to one wallet lose nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from chargeghar_core.kit.db import create_sessionmaker
from chargeghar_core.payments.models import LedgerKind, Wallet
from chargeghar_core.payments.repository import WalletRepository
from chargeghar_core.payments.wallet import InsufficientFunds, WalletService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rentals_support import add_renter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

# One operation: (kind of posting, amount, key number — small so that keys repeat, as retries do).
operation = st.tuples(
    st.sampled_from(["credit", "debit", "debit_partial"]), st.integers(1, 20_000), st.integers(0, 12)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=25))
async def test_ledger_sum_equals_the_balance_after_any_sequence(
    session: AsyncSession, operations: list[tuple[str, int, int]]
) -> None:
    user_id = await add_renter(session)
    wallet = WalletService(session)
    repository = WalletRepository(session)
    model_balance = 0
    applied_keys: dict[str, int] = {}
    for action, amount, key_number in operations:
        key = f"op:{user_id}:{action}:{key_number}"
        try:
            if action == "credit":
                posting = await wallet.credit(user_id, amount, LedgerKind.TOPUP, key)
            else:
                posting = await wallet.debit(
                    user_id, amount, LedgerKind.RENTAL_CHARGE, key, allow_partial=action == "debit_partial"
                )
        except InsufficientFunds:
            assert action == "debit" and key not in applied_keys and amount > model_balance
            continue
        if key in applied_keys:
            assert not posting.applied and posting.amount_paisa == applied_keys[key]
        elif posting.applied:
            applied_keys[key] = posting.amount_paisa
            model_balance += posting.amount_paisa
        balance = await repository.balance(user_id)
        assert balance == model_balance >= 0
        assert await repository.ledger_sum(user_id) == balance
        assert posting.balance_after_paisa == balance
    await session.rollback()


@pytest.fixture
async def committed_session(committed_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with create_sessionmaker(committed_engine)() as committed:
        yield committed


async def test_concurrent_postings_to_one_wallet_lose_no_update(
    committed_engine: AsyncEngine, committed_session: AsyncSession
) -> None:
    user_id = await add_renter(committed_session, balance_paisa=1000)
    sessionmaker = create_sessionmaker(committed_engine)

    async def post(index: int) -> bool:
        async with sessionmaker() as worker:
            service = WalletService(worker)
            try:
                if index % 3 == 0:
                    await service.debit(user_id, 300, LedgerKind.RENTAL_CHARGE, f"c:{user_id}:{index}")
                else:
                    await service.credit(user_id, 100, LedgerKind.TOPUP, f"c:{user_id}:{index}")
            except InsufficientFunds:
                await worker.rollback()
                return False
            await worker.commit()
            return True

    results = await asyncio.gather(*(post(index) for index in range(30)))

    debits = sum(1 for index, ok in enumerate(results) if ok and index % 3 == 0)
    credits = sum(1 for index, ok in enumerate(results) if ok and index % 3 != 0)
    async with sessionmaker() as check:
        repository = WalletRepository(check)
        balance = await repository.balance(user_id)
        assert balance == 1000 + 100 * credits - 300 * debits
        assert balance >= 0
        assert await repository.ledger_sum(user_id) == balance
        version = await check.scalar(select(Wallet.version).where(Wallet.user_id == user_id))
        assert version is not None and version >= credits + debits
    assert credits == 20


async def test_a_repeated_key_is_applied_once(session: AsyncSession) -> None:
    user_id = await add_renter(session)
    wallet = WalletService(session)
    first = await wallet.credit(user_id, 500, LedgerKind.TOPUP, f"k:{user_id}")
    second = await wallet.credit(user_id, 500, LedgerKind.TOPUP, f"k:{user_id}")
    assert first.applied and not second.applied
    assert await wallet.balance(user_id) == 500
    with pytest.raises(InsufficientFunds):
        await wallet.debit(user_id, 501, LedgerKind.RENTAL_CHARGE, f"d:{user_id}")
    partial = await wallet.debit(
        user_id, 501, LedgerKind.RENTAL_CHARGE, f"p:{uuid.uuid4()}", allow_partial=True
    )
    assert (partial.amount_paisa, partial.balance_after_paisa) == (-500, 0)
