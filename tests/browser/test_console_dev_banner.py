"""`make dev` names the operator console and its admin: the password once, where it is kept afterwards."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path
from types import ModuleType

import pytest
from chargeghar_ingest.simulator.stack import LocalStack, StackConfig


@pytest.fixture
def dev(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("chargeghar_dev_script", repo_root / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(module, "VAR_DIR", tmp_path / "var" / "dev")
    monkeypatch.setattr(module, "ADMIN_CREDENTIALS", tmp_path / "var" / "dev" / "admin-credentials.json")
    return module


def banner(dev: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    password, created = dev.admin_password()
    stack = LocalStack(
        StackConfig(var_dir=tmp_path / "stack", database_url="sqlite+aiosqlite://", core_port=8123)
    )
    dev.print_banner(stack, ["864601060000001"], 1883, password, created=created)
    return password, capsys.readouterr().out


def test_the_first_run_prints_the_console_and_the_new_password_later_runs_where_it_is(
    dev: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password, first = banner(dev, tmp_path, capsys)
    assert "http://127.0.0.1:8123/console" in first
    assert "admin@chargeghar.local" in first and password in first
    kept = dev.ADMIN_CREDENTIALS
    assert json.loads(kept.read_text()) == {"email": "admin@chargeghar.local", "password": password}
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    again, later = banner(dev, tmp_path, capsys)
    assert again == password  # the same account on the same dev database
    assert "http://127.0.0.1:8123/console" in later
    assert password not in later
    assert "var/dev/admin-credentials.json" in later
