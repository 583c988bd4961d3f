"""The registry of known stations (devices): which IMEIs may get MQTT credentials from the ingest."""
