"""The study file as data: its typed spec (``spec``), loading and planning (``load``), the rules it
must follow (``rules``), the search space's vocabulary (``space``), stage references (``refs``),
the names of a trial's numbers (``names``), finalist selection (``selection``) and the paper's
numbers (``paper``). No Ray, no MLflow."""
