"""Versioning: in-flight invocations finish on their old deployment, new ones run on the new."""
