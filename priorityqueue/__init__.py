"""Priority queue: at most 10 calls run an expensive operation at once, lowest priority first."""
