"""skinray: dermoscopic lesion classification (MobileNetV2) as distributed Ray batch jobs."""

__version__ = "0.1.0"

# Exit codes a scheduler acts on (README "Exit codes"): 0 done; the rest by what retrying would do.
EXIT_OK = 0
EXIT_USAGE = 2  # the command or its input is wrong: fix it, a retry fails the same way
EXIT_DATA = 3  # the command ran and its data says no (a failed run, a promise not held, a dead model): do not retry
EXIT_TEMPORARY = 75  # storage or cluster unavailable (EX_TEMPFAIL): retry later, the run resumes


class SkinrayError(Exception):
    """An error the user can fix; the CLI prints its message as one line, no traceback, and exits 2."""

    kind = "usage"
    exit_code = EXIT_USAGE

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class DataError(SkinrayError):
    """The command ran and its data says no: a run failed on too many bad images, a model that did not learn."""

    kind = "data"
    exit_code = EXIT_DATA


class TemporaryError(SkinrayError):
    """Storage or the cluster is unavailable right now; the same command later resumes where this one stopped."""

    kind = "temporary"
    exit_code = EXIT_TEMPORARY
