"""What a study leaves for people: MLflow runs (``tracking``), the console (``progress``, ``table``),
summary files (``summary``) and reports (``reports``); numbers formatted one way (``format``)."""
