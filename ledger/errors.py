"""Typed errors of the `ledger` package.

Every error raised on purpose by `ledger` derives from :class:`LedgerError`, grouped in families
(compiling, the local node, deployment, the chain, the relayer). Other modules add subclasses to
these families; callers catch a family or the root.
"""

from __future__ import annotations

__all__ = [
    "ChainError",
    "CompileError",
    "DeploymentError",
    "LedgerError",
    "NodeError",
    "RelayerError",
]


class LedgerError(Exception):
    """Root of every error that `ledger` raises on purpose."""


class CompileError(LedgerError):
    """Compiling the Solidity sources failed.

    ``messages`` holds the compiler's formatted error messages (one per error), if any.
    """

    def __init__(self, message: str, *, messages: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.messages = messages


class NodeError(LedgerError):
    """The local node (anvil) could not be found, started, reached or stopped."""


class DeploymentError(LedgerError):
    """Deploying or locating the contracts failed."""


class ChainError(LedgerError):
    """A JSON-RPC call or a transaction on the chain failed."""


class RelayerError(LedgerError):
    """The relayer could not submit, batch or confirm a transaction."""
