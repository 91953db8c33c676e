"""Failures that do not go away: give up and compensate, pause and resume, wait as told."""
