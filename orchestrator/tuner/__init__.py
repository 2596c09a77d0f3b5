"""The Ray layers of a stage: the Tuner (``stage``, ``searchers``), the per-trial driver
(``driver``), the Ray Train worker loop (``worker``), the record of every trial and ``--resume``
(``ledger``, ``runfile``), what Tune says about a trial (``status``), lines from workers to the
console (``console``) and interrupts (``interrupts``)."""
