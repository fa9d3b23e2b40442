"""Scenario files: the schema, loading and resolving, overrides, the messages for a wrong one."""
