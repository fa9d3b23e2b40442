"""fededge: federated learning on fleets of constrained edge devices.

Devices train CNNs on their own data streams under a compute budget and save
computation with a self-supervised early instance filter (EIF) and error map
pruning (EMP) (Wu et al., 2020). The core library in this package has no
Flower or Ray imports; ``clients`` and ``server`` adapt it to Flower.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fededge")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
