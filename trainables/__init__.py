"""SPROUT and its baselines as Ray-free training methods, with models, data and evaluation.

Importing the package is cheap (no torch): submodules load when used, so command-line help
and study listings answer at once.
"""

from __future__ import annotations

from .lazy import surface

__all__ = ["list_datasets", "list_methods", "list_models"]
__version__ = "0.1.0"
_LAZY = {"list_datasets": "data", "list_methods": "methods", "list_models": "models"}


__getattr__ = surface(__name__, _LAZY)
