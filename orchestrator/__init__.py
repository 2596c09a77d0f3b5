"""Studies as Ray Tune + Optuna searches over Ray Train trials, tracked in MLflow."""
