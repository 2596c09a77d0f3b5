"""Studies as Ray Tune + Optuna searches over Ray Train trials, tracked in MLflow.

The command is ``orchestrator/sweep.py``; its layers are the subpackages (``docs/development.md``)."""

__all__: list[str] = []  # a command and its layers: nothing is imported from the package itself
