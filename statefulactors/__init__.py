"""Stateful actors and state machines: one machine per key, one transition at a time."""
