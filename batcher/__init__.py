"""Batching: group items into batches of 10, or fewer after a 1 s linger period."""
