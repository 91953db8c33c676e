"""Durable agent: an AI agent loop with tools whose every model call and tool step is journaled."""
