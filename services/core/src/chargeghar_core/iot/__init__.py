"""The internal endpoint the ingest (or the legacy Java bridge) posts station events to."""
