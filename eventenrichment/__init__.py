"""Event enrichment: package state from an RPC registration joined with Kafka location updates."""
