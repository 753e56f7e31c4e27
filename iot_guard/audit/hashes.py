"""The SHA-256 calls of the audit chain, defined once.

    leaf_hash(line)        = SHA-256(0x00 || line)          [RFC 6962 §2.1]
    node_hash(left, right) = SHA-256(0x01 || left || right)  [RFC 6962 §2.1]
    hex_sha256(data)       = SHA-256(data) in lowercase hex, as bytes (payload_sha256)

The definitions below run on hashlib. ``make native`` also builds ``_chainhash.c``, the
same three in C on OpenSSL without a hash object per call; when it is built it takes
their place (``NATIVE``), and ``tests/unit/test_audit_hashes.py`` holds it to these.
"""

from __future__ import annotations

import hashlib

_sha256 = hashlib.sha256


def py_leaf_hash(line: bytes, /) -> bytes:
    return _sha256(b"\x00" + line).digest()


def py_node_hash(left: bytes, right: bytes, /) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def py_hex_sha256(data: bytes, /) -> bytes:
    return _sha256(data).hexdigest().encode("ascii")


try:
    from ._chainhash import hex_sha256, leaf_hash, node_hash

    NATIVE = True
except ModuleNotFoundError:  # not built (`make native`): the definitions themselves.
    # A build that is there but does not load (no libcrypto, say) is an ImportError
    # that stops the import: a guard never quietly runs other code than it was built with.
    leaf_hash, node_hash, hex_sha256 = py_leaf_hash, py_node_hash, py_hex_sha256
    NATIVE = False
