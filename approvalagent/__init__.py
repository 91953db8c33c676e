"""Approval agent: a tool that waits for a human approval, suspended, optionally with a timeout."""
