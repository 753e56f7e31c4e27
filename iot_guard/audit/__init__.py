"""The tamper-evident audit trail (issue 8 §1).

- ``records``: the line format (every line starts with its seq and the previous line's hash)
- ``chain``: one guard instance's chain, sans-IO: sealing lines, checking that a line continues it
- ``merkle``: RFC 6962/9162 tree hash, the O(log n) frontier, inclusion proofs
- ``checkpoint``: C2SP signed-note checkpoints (origin, tree size, root)
- ``signer``: Ed25519 note keys (the ``cryptography`` package)
- ``log``: ``AuditLog``, the file writer (fail closed, checkpoints off the packet path, reopen)
- ``recovery``: continuing a chain from a log file's tail after a restart
- ``verifier``: ``iot-guard audit verify``; ``cli``: the ``audit`` commands
"""

from .log import AuditError, AuditLog, default_origin, utc_iso

__all__ = ["AuditError", "AuditLog", "default_origin", "utc_iso"]
