"""The ``fededge`` command line: the one part of fededge that imports ``clients`` and ``server``."""
