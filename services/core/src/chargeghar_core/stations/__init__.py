"""Stations, their slots, status history and the sync log of inbound station events."""
