"""Scenario files: the schema, loading and overrides, and the one error type for user mistakes."""
