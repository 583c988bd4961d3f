"""Install the uv binary from its PyPI wheel using the Python standard library only.

The fallback of scripts/uv for machines whose Python has neither pip nor a working venv module (a fresh
Debian without python3-venv): reads PyPI's JSON API, picks the wheel built for this OS and CPU, checks
its sha256 against the digest PyPI publishes, and extracts the ``uv`` executable into the target folder.

Usage: python3 scripts/fetch_uv.py TARGET_BIN_DIR
Environment: UV_BOOTSTRAP_INDEX (default https://pypi.org/pypi) for a PyPI mirror with the JSON API.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import stat
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

INDEX = os.environ.get("UV_BOOTSTRAP_INDEX", "https://pypi.org/pypi").rstrip("/")

# CPU names as uname reports them → the names wheel tags use.
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def wanted_tags() -> tuple[str, str]:
    """(platform family, cpu) of the wheel this machine runs."""
    machine = ARCHES.get(platform.machine().lower())
    if machine is None:
        raise SystemExit(f"fetch_uv: no uv wheel is known for CPU {platform.machine()!r}")
    if sys.platform.startswith("linux"):
        libc, _ = platform.libc_ver()
        return ("manylinux" if libc == "glibc" else "musllinux"), machine
    if sys.platform == "darwin":
        return "macosx", ("arm64" if machine == "aarch64" else "x86_64")
    raise SystemExit(f"fetch_uv: unsupported platform {sys.platform!r}; install uv by hand")


def pick_wheel(release: dict[str, object]) -> dict[str, object]:
    family, cpu = wanted_tags()
    files = release.get("urls")
    assert isinstance(files, list)
    for entry in files:
        name = str(entry.get("filename", ""))
        if entry.get("packagetype") == "bdist_wheel" and family in name and name.endswith(f"{cpu}.whl"):
            return dict(entry)
    raise SystemExit(f"fetch_uv: the latest uv release has no wheel for {family}/{cpu}")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    target = Path(sys.argv[1])
    index_url = f"{INDEX}/uv/json"
    with urllib.request.urlopen(index_url, timeout=60) as answer:  # noqa: S310 - fixed https URL
        release = json.load(answer)
    wheel = pick_wheel(release)
    print(f"[uv bootstrap] downloading {wheel['filename']}", file=sys.stderr)
    # Mirrors may answer with URLs relative to the JSON document.
    wheel_url = urllib.parse.urljoin(index_url, str(wheel["url"]))
    with urllib.request.urlopen(wheel_url, timeout=300) as answer:  # noqa: S310 - from the index
        payload = answer.read()
    digests = wheel.get("digests")
    expected = digests.get("sha256") if isinstance(digests, dict) else None
    if not expected or hashlib.sha256(payload).hexdigest() != expected:
        raise SystemExit("fetch_uv: the downloaded wheel does not match PyPI's sha256; nothing installed")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            raise SystemExit("fetch_uv: the wheel holds no uv executable")
        target.mkdir(parents=True, exist_ok=True)
        binary = target / "uv"
        binary.write_bytes(archive.read(member))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


if __name__ == "__main__":
    main()
