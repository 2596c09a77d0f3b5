"""Study files (YAML), shipped with the package so that sweep.py finds them wherever it runs."""
