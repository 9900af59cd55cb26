"""The one root error type and its exit codes.

Every failure that should reach the user is a :class:`MigrunnerError`. Library code raises;
only the CLI turns an error into a one-line message and a process exit code (alembic's
``CommandError`` pattern), so no helper ever calls ``sys.exit``.

Exit codes (documented in the README):

====  ===============================================================

0     success
1     a migration failed (SQL or JS error); that migration was rolled back
2     usage, configuration or migration-source error (bad input, nothing ran)
3     ``status --exit-code``: migrations are pending
4     the migration lock: not obtained within ``--lock-timeout``, or lost mid-run
5     database unreachable, or the connection was lost mid-run
6     drift: an applied migration's file is missing or was edited
7     ``up --dry-run --analyze --fail-on``: a finding of a listed rule was found
8     ``up --preflight``: an old session holds a lock the plan needs
9     ``verify``: the round trip did not hold (``runner.verify.VerifyFailed``)
====  ===============================================================

"""

from __future__ import annotations


class MigrunnerError(Exception):
    """Root of every error migrunner reports. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class MigrationFailed(MigrunnerError):
    """A migration's statement or code failed; its transaction was rolled back.

    ``sqlstate`` is the PostgreSQL error code when a statement failed: the migrator retries on
    55P03/40P01 and re-runs outside a transaction on 25001/55P04.
    """

    exit_code = 1

    def __init__(
        self, message: str, *, sqlstate: str | None = None, exit_code: int | None = None
    ) -> None:
        super().__init__(message, exit_code=exit_code)
        self.sqlstate = sqlstate


class ConfigError(MigrunnerError):
    """Bad options, environment, config file or `.sequelizerc`."""

    exit_code = 2


class SourceError(MigrunnerError):
    """The migrations folder or a migration file is unusable (caught before anything runs)."""

    exit_code = 2


class PendingMigrations(MigrunnerError):
    """Raised by ``status --exit-code`` when migrations are pending (readiness gates)."""

    exit_code = 3


class LockTimeout(MigrunnerError):
    """Another runner held the migration lock for longer than ``--lock-timeout``."""

    exit_code = 4


class DatabaseUnavailable(MigrunnerError):
    """The database cannot be reached, or the connection was lost during the run."""

    exit_code = 5


class DriftError(MigrunnerError):
    """Applied migrations whose files are missing or were edited since they ran."""

    exit_code = 6


class LockLost(MigrunnerError):
    """The session holding the migration lock ended mid-run (terminated, timed out, server
    gone); the running migration was rolled back with it."""

    exit_code = 4


class AtomicModeUnavailable(MigrunnerError):
    """Not shown to users: this attempt of a JS migration cannot give sequelize-cli's result on
    the runner's one transaction. The migrator rolls it back and re-runs the migration, in a
    transaction begun at ``isolation`` when that is all it needs, else in pool mode."""

    def __init__(self, message: str, *, isolation: str | None = None) -> None:
        super().__init__(message)
        self.isolation = isolation
