"""toroid: the loss landscape of deep classifiers with all parameter symmetries removed."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("toroid")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
