"""The benchmark's baseline: a handler that does nothing, served like every pattern."""
