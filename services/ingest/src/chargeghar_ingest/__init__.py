"""The ingest service: stations in, events to core, commands out.

Module map (one concern each):

- ``app``          FastAPI app + the lifespan that owns every long-lived part
- ``settings``     pydantic-settings, env prefix ``INGEST_``, nested groups with ``__``
- ``device_api``   HTTP endpoints the cabinets call (connect, upload, return, config, EMQX auth)
- ``transport``    the only module that imports the MQTT library (aiomqtt 2.5)
- ``consumer``     routing of every device frame arriving over MQTT
- ``pipeline``     events get ids/observation times, presence transitions, return dedupe → spool
- ``spool``        durable SQLite spool, dead letters, command audit
- ``forwarder``    login, HMAC signing, retries, batching towards core
- ``presence``     last-seen and ONLINE/OFFLINE (Redis or in-process)
- ``commands``     command API logic: lock, publish, reply matching (``replies``), audit
- ``command_api`` / ``ops_api``   the HTTP routes for core and for operators
- ``simulator``    virtual stations (separate package, used by ``make dev``, e2e tests, benchmarks)
"""
