"""Flower ClientApps: a device = profile + budget + stream + local state.

Thin adapters over :mod:`fededge.fleet`; all logic lives in the core library.
"""
