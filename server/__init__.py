"""Flower ServerApp, the fleet strategy and the simulation runner.

Thin adapters over :mod:`fededge` (scenario, fleet runtime, report).
"""
