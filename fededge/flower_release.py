"""The Flower release that fededge's Flower adapters (``clients/``, ``server/``) are written for.

Both sides use a few Flower internals, fenced in ``clients/flower_compat.py`` and
``server/flower_compat.py``; each checks the installed Flower with
:func:`require_flower` when it is imported, so another release fails at once
with a message that names both versions instead of misbehaving mid-run. No
Flower import here: the version comes from the installed package's metadata.
"""

from __future__ import annotations

from importlib.metadata import version

__all__ = ["SUPPORTED", "require_flower"]

#: Flower's release line (``major.minor``); ``pyproject.toml`` pins the same.
SUPPORTED = "1.42"


def require_flower(side: str) -> str:
    """The installed Flower's version, if it is of the :data:`SUPPORTED` line.

    Raises
    ------
    ImportError
        Naming ``side`` (who needs it), the supported line and the installed version.
    """
    installed = version("flwr")
    if installed.split(".")[:2] != SUPPORTED.split("."):
        raise ImportError(
            f"fededge's {side} needs Flower {SUPPORTED}.x (it relies on internals that change "
            f"between releases), but flwr {installed} is installed: "
            f"pip install 'flwr[simulation]>={SUPPORTED},<1.43'"
        )
    return installed
