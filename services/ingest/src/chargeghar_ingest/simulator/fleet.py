"""A fleet of virtual cabinets sharing one HTTP connection pool and one pool of rented banks.

IMEIs are 15 digits: a configurable prefix (a type-allocation code of the 4G modules ChargeGhar uses by
default), a serial drawn from the seed, and a Luhn check digit like real IMEIs. Power-bank SNs are unique
8-digit numbers (the legacy bridge flags any other length as "SN error"). The same seed gives the same
fleet, so runs are repeatable; different seeds give disjoint fleets with overwhelming probability.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field

import httpx

from chargeghar_ingest.simulator.cabinet import CabinetState, NoFreeSlot, PowerBank
from chargeghar_ingest.simulator.device import (
    CabinetConfig,
    CabinetOffline,
    CabinetStats,
    ReturnChannel,
    VirtualCabinet,
)
from chargeghar_ingest.simulator.stopping import cancel_and_wait, raise_if_cancel_requested

__all__ = ["Fleet", "FleetConfig", "generate_imeis", "luhn_check_digit"]

logger = logging.getLogger(__name__)

IMEI_LENGTH = 15
SN_RANGE = (10_000_000, 99_999_999)


def luhn_check_digit(digits: str) -> int:
    """The Luhn digit that completes ``digits`` (the 15th digit of an IMEI)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:  # doubled: every second digit counting from the right of the payload
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def generate_imeis(count: int, *, prefix: str, seed: int) -> list[str]:
    """``count`` distinct 15-digit IMEIs that start with ``prefix`` (at most 12 digits)."""
    if not prefix.isdigit() or len(prefix) > IMEI_LENGTH - 3:
        raise ValueError(f"IMEI prefix must be 1–{IMEI_LENGTH - 3} digits, got {prefix!r}")
    serial_digits = IMEI_LENGTH - 1 - len(prefix)
    capacity = 10**serial_digits
    if count > capacity:
        raise ValueError(f"prefix {prefix!r} leaves room for only {capacity} IMEIs")
    start = random.Random(f"imei:{seed}").randrange(capacity - count + 1)
    imeis = []
    for serial in range(start, start + count):
        body = f"{prefix}{serial:0{serial_digits}d}"
        imeis.append(body + str(luhn_check_digit(body)))
    return imeis


@dataclass(frozen=True)
class FleetConfig:
    stations: int = 10
    slots: int = 12
    # Share of slots that start with a bank in them.
    fill_ratio: float = 0.75
    imei_prefix: str = "86460106"
    seed: int = 1
    # Every cabinet gets these settings (imei, slots and seed are filled in per cabinet).
    cabinet: CabinetConfig = field(default_factory=lambda: CabinetConfig(imei="0"))
    # Rented banks come back to a random cabinet of the fleet after this many *simulated* seconds
    # (None = never; a test returns banks itself).
    auto_return_after_s: float | None = None
    return_via: ReturnChannel = "both"
    # Open the sessions over this many real seconds rather than all at once (a broker-friendly ramp).
    start_spread_s: float = 0.0


class Fleet:
    """Create, run and stop many :class:`VirtualCabinet` objects."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.rented_banks: dict[int, PowerBank] = {}
        self._rented_at: dict[int, float] = {}
        self.http = httpx.AsyncClient(
            timeout=config.cabinet.http_timeout_s,
            limits=httpx.Limits(
                max_connections=min(200, max(10, config.stations)), max_keepalive_connections=50
            ),
        )
        rng = random.Random(f"fleet:{config.seed}")
        imeis = generate_imeis(config.stations, prefix=config.imei_prefix, seed=config.seed)
        banks_per_cabinet = round(config.slots * config.fill_ratio)
        sns = rng.sample(range(*SN_RANGE), banks_per_cabinet * config.stations)
        self.cabinets: list[VirtualCabinet] = []
        for index, imei in enumerate(imeis):
            cabinet_config = dataclasses.replace(
                config.cabinet, imei=imei, slots=config.slots, seed=config.seed
            )
            state = CabinetState.empty(config.slots)
            state.fill(rng, sns[index * banks_per_cabinet : (index + 1) * banks_per_cabinet])
            cabinet = VirtualCabinet(
                cabinet_config, state=state, http=self.http, rented_banks=self.rented_banks
            )
            self.cabinets.append(cabinet)
        self.by_imei = {cabinet.imei: cabinet for cabinet in self.cabinets}
        self._rng = rng

    async def run(self, duration_s: float | None = None) -> None:
        """Run every cabinet until ``duration_s`` has passed (or until cancelled).

        The stop is bounded: cabinets are cancelled until they have ended (see
        :func:`~chargeghar_ingest.simulator.stopping.cancel_and_wait`), a cancellation always wins.
        """
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(duration_s):
                spread = self.config.start_spread_s / max(1, len(self.cabinets))
                for cabinet in self.cabinets:
                    tasks.append(asyncio.create_task(cabinet.run(), name=f"cabinet-{cabinet.imei}"))
                    if spread:
                        await asyncio.sleep(spread)
                if self.config.auto_return_after_s is not None:
                    tasks.append(asyncio.create_task(self._auto_return_loop(), name="auto-return"))
                # Not gather: a cancelled gather waits for every child, also one that lost its cancel.
                if tasks:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                    for task in done:
                        task.result()  # a cabinet ends only by an error; it ends the fleet
        except TimeoutError:
            logger.info("fleet: duration of %.0fs reached", duration_s or 0)
        finally:
            await cancel_and_wait(tasks, what="fleet")

    async def wait_connected(self, within_s: float = 30.0) -> None:
        async with asyncio.timeout(within_s):
            await asyncio.gather(*(cabinet.connected.wait() for cabinet in self.cabinets))

    async def aclose(self) -> None:
        await self.http.aclose()

    def stats(self) -> CabinetStats:
        """Counters summed over every cabinet."""
        total = CabinetStats()
        for cabinet in self.cabinets:
            for counter in dataclasses.fields(CabinetStats):
                name = counter.name
                setattr(total, name, getattr(total, name) + getattr(cabinet.stats, name))
        return total

    async def _auto_return_loop(self) -> None:
        assert self.config.auto_return_after_s is not None
        speed = self.config.cabinet.speed
        while True:
            now = time.monotonic()
            for sn in list(self.rented_banks):
                first_seen = self._rented_at.setdefault(sn, now)
                if (now - first_seen) * speed < self.config.auto_return_after_s:
                    continue
                await self._return_somewhere(sn)
                raise_if_cancel_requested()  # a return publishes over aiomqtt (wait_for)
            for sn in list(self._rented_at):
                if sn not in self.rented_banks:
                    del self._rented_at[sn]
            await asyncio.sleep(1.0)

    async def _return_somewhere(self, sn: int) -> None:
        candidates = [
            cabinet for cabinet in self.cabinets if cabinet.connected.is_set() and cabinet.state.free_holes()
        ]
        if not candidates:
            return
        cabinet = self._rng.choice(candidates)
        bank = self.rented_banks[sn]
        # A rental drains the bank: it comes back with 10–60 % less charge.
        soc = max(3, bank.soc - self._rng.randint(10, 60))
        try:
            await cabinet.return_bank(sn, soc=soc, via=self.config.return_via)
        except (CabinetOffline, NoFreeSlot) as error:
            logger.info("fleet: return of bank %d postponed: %s", sn, error)
