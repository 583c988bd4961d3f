"""Process-local counters exposed at GET /metrics (Prometheus text) and GET /metrics.json."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

# name -> help text; every counter the service increments is declared here so /metrics always lists it.
COUNTERS: Mapping[str, str] = {
    "mqtt_messages_total": "MQTT messages received on device topics",
    "mqtt_frames_invalid_total": "MQTT payloads that did not decode as a device frame",
    "mqtt_frames_unhandled_total": "Valid frames with a command byte the ingest does not route",
    "http_device_requests_total": "Device HTTP calls answered",
    "http_device_rejected_total": "Device HTTP calls answered with a 4xx code (bad sign, frame or params)",
    "http_device_extra_params_total": "Device HTTP calls with parameters the vendor lists do not name (kept)",
    "broker_webhook_events_total": "Broker client connected/disconnected events received (EMQX webhook)",
    "broker_acl_denied_total": "MQTT publishes/subscribes refused by /api/emqx/acl (a device off its topics)",
    "emqx_client_takeovers_total": "Device logins soon after the same client id's last (sessions fighting)",
    "device_connect_refused_total": "Connects answered without credentials (registry: IMEI not approved)",
    "broker_auth_unregistered_total": "MQTT logins refused because the IMEI is not approved (registry)",
    "device_registry_unavailable_total": "Registry look-ups core could not answer (cached approvals used)",
    "events_spooled_total": "Events committed to the spool",
    "returns_deduplicated_total": "Return reports recognised as an already spooled return",
    "returns_corroborated_total": "HTTP-only return claims confirmed by a later MQTT 0x40 report",
    "events_delivered_total": "Events core accepted (2xx)",
    "events_retried_total": "Delivery attempts that failed and were scheduled again",
    "events_dead_lettered_total": "Events core refused for good (kept in the dead-letter table)",
    "events_struck_total": "Failures core gave for one event while accepting others (strikes toward parking)",
    "events_parked_total": "Events parked after core.max_attempts strikes (dead letter 'parked'; ALERT)",
    "events_redriven_total": "Dead-lettered events put back into the spool by an operator",
    "http_device_too_large_total": "Device HTTP calls refused with 413 (body above device.max_body_bytes)",
    "device_strings_cleaned_total": "Device-supplied strings cut or stripped of control characters",
    "retention_pruned_total": "Dead-letter and command-audit rows removed by the retention job",
    "core_logins_total": "Logins to core (first, refresh and after 401)",
    "dead_letters_total": "Rows written to the dead-letter table",
    "presence_online_total": "ONLINE transitions emitted",
    "presence_offline_total": "OFFLINE transitions emitted",
    "presence_store_errors_total": "Presence updates skipped because the store (Redis) failed",
    "reply_broker_errors_total": "Device replies whose waiter lookup failed (reported as command_result)",
    "commands_total": "Commands accepted by the command API",
    "commands_ok_total": "Commands whose reply reported success",
    "commands_failed_total": "Commands whose reply reported failure or could not be published",
    "commands_timeout_total": "Commands that saw no reply within their timeout",
    "commands_rejected_busy_total": "Commands refused because the station had one in flight",
    "commands_rejected_offline_total": "Commands refused because the station is offline",
    "late_replies_total": "Device replies forwarded as command_result events",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        # Gauges are read when rendered (spool depth, connection state) so they are never stale.
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: int = 1) -> None:
        if name not in COUNTERS:
            raise KeyError(f"undeclared counter {name}")
        self.counters[name] += amount

    def snapshot(self, gauge_values: Mapping[str, float]) -> dict[str, float]:
        values: dict[str, float] = {name: float(self.counters.get(name, 0)) for name in COUNTERS}
        values.update(gauge_values)
        return values

    @staticmethod
    def render_prometheus(values: Mapping[str, float]) -> str:
        lines: list[str] = []
        for name, value in values.items():
            metric = f"chargeghar_ingest_{name}"
            kind = "counter" if name in COUNTERS else "gauge"
            help_text = COUNTERS.get(name, name.replace("_", " "))
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", f"{metric} {value:g}"]
        return "\n".join(lines) + "\n"
