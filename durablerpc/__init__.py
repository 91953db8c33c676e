"""Durable RPC, idempotency and concurrency: a product can be reserved only once."""
