"""Convert sync tasks to async: wait for an upload, or have its link mailed if it is slow."""
