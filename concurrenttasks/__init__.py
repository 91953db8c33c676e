"""Concurrent async tasks: email verification racing a callback, reminders and a timeout."""
