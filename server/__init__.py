"""The server side on Flower: the ServerApp, the fleet strategy, reply checks and the SuperLink.

Thin adapters over :mod:`fededge` (scenario, fleet runtime, report); devices are
reached only through Flower messages in the format of :mod:`fededge.wire`.
"""
