"""The study's run record, shared by the Ray layers and the results: a trial's status and what
Tune says about it (``status``), the launch file in the output directory (``launch_file``), each
trial's record in it (``ledger``) and the console mailbox that workers and shards write to
(``console``). No Ray at import; no MLflow."""

from .console import ConsoleLines, console_lines, console_say, drain
from .launch_file import LAUNCH_FILE, LaunchFile, launch_file_in, trial_key
from .ledger import TRAIN_RUN_PREFIX, plain, split, stage_records, train_run_name, trial_of_train_run
from .status import ENDED, TrialStatus, completed_status, error_cause, trial_error

__all__ = [
    "ENDED",
    "LAUNCH_FILE",
    "TRAIN_RUN_PREFIX",
    "ConsoleLines",
    "LaunchFile",
    "TrialStatus",
    "completed_status",
    "console_lines",
    "console_say",
    "drain",
    "error_cause",
    "launch_file_in",
    "plain",
    "split",
    "stage_records",
    "train_run_name",
    "trial_error",
    "trial_key",
    "trial_of_train_run",
]
