"""Payment state machine: payments processed once, cancellable, consistent under races."""
