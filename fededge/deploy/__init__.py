"""Real devices: node configs, certificates and keys, Flower command lines, a loopback deployment.

No Flower import: Flower's programs run as separate processes.
"""
