"""Scheduling tasks: payment reminders on durable timers, then escalation to support."""
