"""Database access from durable handlers: plain, journaled, keyed, idempotent and 2PC writes."""
