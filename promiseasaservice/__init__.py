"""Durable promises as a service: write-once promises any process can await, across crashes."""
