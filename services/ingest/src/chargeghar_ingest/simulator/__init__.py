"""Station simulator: virtual cabinets that speak the real device protocol over real MQTT and HTTP.

Library use::

    fleet = Fleet(FleetConfig(stations=10, slots=12, cabinet=CabinetConfig(imei="0", speed=60)))
    await fleet.run(duration_s=120)

Command line: ``chargeghar simulate --help`` (or ``python -m chargeghar_ingest.simulator --help``).
"""

from chargeghar_ingest.simulator.cabinet import CabinetState, PowerBank, Slot
from chargeghar_ingest.simulator.device import CabinetConfig, CabinetStats, SentFrame, VirtualCabinet
from chargeghar_ingest.simulator.faults import Fault
from chargeghar_ingest.simulator.fleet import Fleet, FleetConfig, generate_imeis

__all__ = [
    "CabinetConfig",
    "CabinetState",
    "CabinetStats",
    "Fault",
    "Fleet",
    "FleetConfig",
    "PowerBank",
    "SentFrame",
    "Slot",
    "VirtualCabinet",
    "generate_imeis",
]
