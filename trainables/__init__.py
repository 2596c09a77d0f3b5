"""SPROUT and its baselines as Ray-free training methods, with models, data and evaluation."""
from .data import list_datasets
from .methods import list_methods
from .models import list_models

__all__ = ["list_datasets", "list_methods", "list_models"]
__version__ = "0.1.0"
