"""The paper's setting of each experiment the project reproduces, cell by cell with its source (data files)."""
