"""The embedded MQTT broker of the single-machine setup (design.md "embedded default").

`make dev` and the test suite (when no Mosquitto is reachable) run it as its own process:
``python -m chargeghar_ingest.embedded_broker --port 1883``. It is amqtt, anonymous, plain TCP on
loopback. It does not implement MQTT v5 shared subscriptions, so the ingest must be configured without a
shared-subscription group when it talks to this broker (one replica, as design.md says).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port))
    await broker.start()
    logging.getLogger(__name__).info("embedded MQTT broker listening on %s:%d", host, port)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedded MQTT broker (amqtt) for the single-machine setup")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("amqtt").setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
