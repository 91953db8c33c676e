"""Cron jobs: run a handler on a cron schedule, with durable timers and K/V state."""
