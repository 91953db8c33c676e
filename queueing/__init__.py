"""(Delayed) message queue: schedule tasks for now or later; each runs exactly once."""
