"""Transactional event processing: Kafka posts update a user feed, in order per user."""
