"""Parallelizing work: fan out subtasks in parallel, then gather their results."""
