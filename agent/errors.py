"""The exceptions of the agent package."""


class AgentError(Exception):
    """Base class of every exception the agent package raises on purpose; ``code`` is
    what the control socket's error reply calls it (docs/api.md)."""

    code = "failed"


class ConfigError(AgentError):
    """Raised for a bad setting or a data directory that cannot be used as asked."""


class DataDirLockedError(AgentError):
    """Raised when another process holds the data directory (only one may open it)."""


class StorageError(AgentError):
    """Raised when the database cannot be read or written: corrupt, full, or too new."""


class ReplicaClosedError(AgentError):
    """Raised when a replica is used after it has been closed."""


class ClockAheadError(AgentError):
    """Raised for a local write while this node's clock is ahead of what its peers accept:
    its stamps would make every peer refuse the change (docs/operations.md, "Clocks")."""

    code = "clock-ahead"
