"""deploy/prometheus: the alert rules load (`promtool check rules`), their unit tests pass (`promtool test
rules`), and every metric the rules and the Grafana dashboard name is one the services expose.

promtool comes from the `prometheus` Debian package (.ci/run installs it). Without it these tests skip, and
fail when CHARGEGHAR_REQUIRE_SERVICES=1 (CI must never pass by skipping them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chargeghar_core.kit.metrics import FAMILIES, PREFIX
from chargeghar_ingest.metrics import COUNTERS
from deploy_support import REPO, service_unavailable

PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
INGEST_OPS_API = REPO / "services" / "ingest" / "src" / "chargeghar_ingest" / "ops_api.py"
METRIC_NAME = re.compile(r"\b(chargeghar_(?:core|ingest)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        service_unavailable("promtool", "install the Debian package `prometheus`")
        raise AssertionError("unreachable")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


def exposed_metrics() -> set[str]:
    core: set[str] = set()
    for name, family in FAMILIES.items():
        core.add(PREFIX + name)
        if family.kind == "histogram":
            core.update(PREFIX + name + suffix for suffix in HISTOGRAM_SUFFIXES)
    # The ingest's gauges are the keys of ops_api._gauges(); its counters are declared in COUNTERS.
    source = INGEST_OPS_API.read_text()
    body = source[source.index("async def _gauges") : source.index("@router.get")]
    gauges = re.findall(r'^\s+"([a-z_]+)": ', body, re.MULTILINE)
    assert "spool_pending_events" in gauges and "parked_events" in gauges
    ingest = {f"chargeghar_ingest_{name}" for name in [*COUNTERS, *gauges]}
    return core | ingest


def test_alert_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_alert_rules_unit_tests_pass() -> None:
    tested = run_promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_example_scrape_config_is_valid() -> None:
    checked = run_promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_required_alert_exists_and_is_unit_tested() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "ChargeGharCoreDown",
        "ChargeGharIngestDown",
        "ChargeGharSyncFailureRatioHigh",
        "ChargeGharStationsOfflineRatioHigh",
        "ChargeGharSpoolBacklogGrowing",
        "ChargeGharParkedEvents",
        "ChargeGharParkedEventsGrowing",
        "ChargeGharPopupFailureRatioHigh",
        "ChargeGharStationSilent",
    } <= names
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == names, names - tested
    # Each alert has a runbook entry.
    runbook = (REPO / "docs" / "troubleshooting.md").read_text()
    for name in names:
        assert f"`{name}`" in runbook, name


@pytest.mark.parametrize(
    "path", [PROMETHEUS / "alerts.yml", *sorted(GRAFANA.glob("*.json"))], ids=lambda path: path.name
)
def test_rules_and_dashboards_name_only_exposed_metrics(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".json":
        dashboard = json.loads(text)
        assert dashboard["title"] and dashboard["panels"]
    named = set(METRIC_NAME.findall(text))
    assert named, path
    unknown = named - exposed_metrics()
    assert not unknown, f"{path.name} names metrics nobody exposes: {sorted(unknown)}"
