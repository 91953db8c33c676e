"""Rate limiting: a token bucket per key; callers wait for their turn with durable sleeps."""
