"""``python -m chargeghar_ingest`` / ``chargeghar-ingest``: serve the ingest app with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def serve(host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from chargeghar_ingest.app import create_app
    from chargeghar_ingest.logs import configure_logging
    from chargeghar_ingest.settings import IngestSettings

    settings = IngestSettings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.http_port,
        log_config=None,  # keep our structlog handler
        proxy_headers=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chargeghar-ingest", description="Run the ingest service")
    parser.add_argument("--host", help="bind address (default INGEST_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default INGEST_HTTP_PORT or 8100)")
    args = parser.parse_args(argv)
    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
