"""Routing of every MQTT message from the stations (protocol.md §2.1, §6 — without the legacy bugs).

| frame | what happens |
|---|---|
| any, even garbled | presence: last-seen refreshed (ONLINE event when news) |
| 0x10 cabinet | ``full`` event; also answers a waiting ``check`` |
| 0x40 return, state 0x01 | ``returned`` event, deduplicated against the HTTP return call |
| 0x28 slot state | ``slot_event`` |
| 0x7A heartbeat | signal/backup power → ``status`` event only when changed |
| 0x21 / 0x31 / 0xCF | the waiting command, else a ``command_result`` event |
| undecodable | logged with hex, counted, dead-letter row; the consumer carries on |
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from chargeghar_protocol.codec import (
    CabinetSnapshot,
    FrameError,
    Heartbeat,
    PopupByHoleResult,
    PopupBySnResult,
    ReturnReport,
    SlotStateReport,
    WifiScanList,
)
from chargeghar_protocol.events import (
    is_successful_return,
    return_to_failed_event,
    return_to_returned_event,
    slot_report_to_slot_event,
)

from chargeghar_ingest.commands import CommandService
from chargeghar_ingest.metrics import Metrics
from chargeghar_ingest.pipeline import (
    EventRecorder,
    decode_device_frame,
    plausible_station_id,
    snapshot_event,
    utc_now,
)
from chargeghar_ingest.spool import Spool
from chargeghar_ingest.transport import InboundMessage

log = structlog.get_logger(__name__)

DEVICE_TOPIC_LEAVES = ("update", "heart")


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    station: str
    leaf: str  # "update" or "heart"


def device_subscriptions(topic_prefix: str, shared_group: str | None) -> list[str]:
    """``{prefix}/powerbank/+/user/update`` and ``…/heart``, as ``$share/<group>/…`` when shared."""
    topics = [f"{topic_prefix}/powerbank/+/user/{leaf}" for leaf in DEVICE_TOPIC_LEAVES]
    if shared_group:
        # The device topics start with "/", hence the empty level: "$share/g//powerbank/+/user/update".
        topics = [f"$share/{shared_group}/{t}" for t in topics]
    return topics


def parse_device_topic(topic: str, topic_prefix: str) -> DeviceTopic | None:
    if not topic.startswith(topic_prefix):
        return None
    parts = topic[len(topic_prefix) :].split("/")
    # ["", "powerbank", "<imei>", "user", "<leaf>"] — the leading slash gives the empty first part.
    if len(parts) != 5 or parts[0] != "" or parts[1] != "powerbank" or parts[3] != "user":
        return None
    if not plausible_station_id(parts[2]):  # a bad identity is dead-lettered as a bad topic, never spooled
        return None
    if parts[4] not in DEVICE_TOPIC_LEAVES:
        return None
    return DeviceTopic(station=parts[2], leaf=parts[4])


class DeviceMessageRouter:
    def __init__(
        self,
        *,
        recorder: EventRecorder,
        commands: CommandService,
        spool: Spool,
        metrics: Metrics,
        topic_prefix: str,
        accept_bad_checksum: bool,
    ) -> None:
        self._recorder = recorder
        self._commands = commands
        self._spool = spool
        self._metrics = metrics
        self._topic_prefix = topic_prefix
        self._accept_bad_checksum = accept_bad_checksum

    async def handle(self, message: InboundMessage) -> None:
        self._metrics.inc("mqtt_messages_total")
        received_at = utc_now()
        topic = parse_device_topic(message.topic, self._topic_prefix)
        if topic is None:
            await self._dead_letter(message, None, "bad_topic", "not a device topic")
            return
        with structlog.contextvars.bound_contextvars(station_id=topic.station, topic=message.topic):
            try:
                frame = decode_device_frame(message.payload, accept_bad_checksum=self._accept_bad_checksum)
            except FrameError as exc:
                # Garbled, but the station did talk to us.
                await self._recorder.seen(topic.station, observed_at=received_at)
                await self._dead_letter(message, topic.station, "bad_frame", str(exc))
                return
            except Exception as exc:
                # A decoder defect must not lose the message either: keep it for replay.
                log.exception("device.decoder_failed", payload_hex=message.payload.hex())
                await self._recorder.seen(topic.station, observed_at=received_at)
                await self._dead_letter(message, topic.station, "decoder_error", repr(exc))
                return
            station = topic.station
            if isinstance(frame, Heartbeat):
                await self._recorder.seen(
                    station, observed_at=received_at, signal_strength=frame.csq, backup_power=frame.bp
                )
                return
            await self._recorder.seen(station, observed_at=received_at)
            if isinstance(frame, CabinetSnapshot):
                event = snapshot_event(frame, station=station, received_at=received_at, channel="mqtt")
                await self._recorder.record(event, station=station)
                await self._commands.offer_reply(station, frame, received_at=received_at)
            elif isinstance(frame, ReturnReport):
                if is_successful_return(frame):
                    returned = return_to_returned_event(frame, imei=station, received_at=received_at)
                    await self._recorder.record_return(returned, station=station, observed_at=received_at)
                else:
                    log.info(
                        "device.return_not_successful",
                        state=frame.state,
                        state_description=frame.state_description,
                        hole=frame.hole,
                        sn=frame.sn,
                    )
                    # Core records and counts it: a fleet-wide return fault must be visible.
                    failed = return_to_failed_event(frame, imei=station, received_at=received_at)
                    await self._recorder.record(failed, station=station)
            elif isinstance(frame, SlotStateReport):
                slot_event = slot_report_to_slot_event(frame, imei=station, received_at=received_at)
                await self._recorder.record(slot_event, station=station)
            elif isinstance(frame, PopupBySnResult | PopupByHoleResult | WifiScanList):
                await self._commands.offer_reply(station, frame, received_at=received_at)
            else:
                self._metrics.inc("mqtt_frames_unhandled_total")
                log.warning(
                    "device.frame_unhandled", cmd=f"0x{frame.cmd:02x}", payload_hex=message.payload.hex()
                )

    async def _dead_letter(
        self, message: InboundMessage, station: str | None, reason: str, detail: str
    ) -> None:
        self._metrics.inc("mqtt_frames_invalid_total")
        self._metrics.inc("dead_letters_total")
        log.warning(
            "device.frame_rejected",
            reason=reason,
            detail=detail,
            topic=message.topic,
            payload_hex=message.payload.hex(),
        )
        await self._spool.add_dead_letter(
            source="mqtt",
            reason=reason,
            station=station,
            detail=f"{message.topic}: {detail}",
            raw=message.payload,
        )
