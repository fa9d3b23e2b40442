"""The device side on Flower: the ClientApp (a device = profile + budget + stream + state).

Thin adapters over :mod:`fededge.fleet`; all logic lives in the core library. The
server is reached only through Flower messages in the format of :mod:`fededge.wire`.
"""
