"""The RFC 6962 / RFC 9162 Merkle tree hash over the audit lines, and inclusion proofs.

Leaves are the exact stored line bytes: leaf = SHA-256(0x00 || line), node =
SHA-256(0x01 || left || right), and a tree of n > 1 leaves splits at k, the largest
power of two smaller than n (RFC 6962 §2.1; RFC 9162 §2.1.1). The 0x00/0x01 prefixes
keep a leaf from ever passing for an inner node (second-preimage resistance). The two
hashes are defined in ``hashes`` (and done natively when built).

The writer keeps only a ``Frontier``: the roots of the perfect subtrees that make up the
n leaves so far (one per set bit of n), so appending is O(1) amortised and the root is
O(log n), whatever the size of the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from .hashes import leaf_hash, node_hash

__all__ = ["EMPTY_ROOT", "Frontier", "inclusion_proof", "leaf_hash", "node_hash", "tree_root",
           "verify_inclusion"]

# MTH({}) = SHA-256() [RFC 6962 §2.1]
EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1) [RFC 6962 §2.1]."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The compact state of an append-only tree of ``size`` leaves.

    ``nodes`` holds the roots of its perfect subtrees, largest (leftmost) first: one per
    set bit of ``size``, from the highest bit down.
    """

    __slots__ = ("nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(nodes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} subtree roots, "
                             f"not {len(nodes)}")
        if any(len(node) != 32 for node in nodes):
            raise ValueError("subtree roots are 32-byte SHA-256 hashes")
        self.size = size
        self.nodes = list(nodes)

    def copy(self) -> Frontier:
        twin = Frontier.__new__(Frontier)
        twin.size = self.size
        twin.nodes = self.nodes.copy()
        return twin

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash: equal-sized subtrees merge, like carries in binary addition."""
        nodes = self.nodes
        n = self.size
        while n & 1:
            leaf = node_hash(nodes.pop(), leaf)
            n >>= 1
        nodes.append(leaf)
        self.size += 1

    def append_leaves(self, leaves: Iterable[bytes]) -> None:
        """``append`` each leaf hash, the loop inline: the audit log appends a batch of
        lines per packet read."""
        nodes = self.nodes
        pop, push = nodes.pop, nodes.append
        size = self.size
        for node in leaves:
            carry = size
            while carry & 1:
                node = node_hash(pop(), node)
                carry >>= 1
            push(node)
            size += 1
        self.size = size

    def root(self) -> bytes:
        """MTH of the leaves so far: fold the subtree roots from the right."""
        nodes = self.nodes
        if not nodes:
            return EMPTY_ROOT
        root = nodes[-1]
        for left in reversed(nodes[:-1]):
            root = node_hash(left, root)
        return root

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Frontier) and self.size == other.size
                and self.nodes == other.nodes)

    def __repr__(self) -> str:
        return f"Frontier(size={self.size}, nodes={len(self.nodes)})"


def tree_root(leaves: Sequence[bytes], lo: int = 0, hi: int | None = None) -> bytes:
    """MTH(D[lo:hi]) over leaf hashes, by the definition (O(n)); the Frontier is the fast way."""
    hi = len(leaves) if hi is None else hi
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(tree_root(leaves, lo, lo + k), tree_root(leaves, lo + k, hi))


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) [RFC 6962 §2.1.1]: sibling subtree roots, leaf level first."""
    if not 0 <= index < size <= len(leaves):
        raise ValueError(f"no leaf {index} in a tree of {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(tree_root(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(tree_root(leaves, lo, lo + k))
            lo += k
    path.reverse()  # collected root-down; the proof lists the leaf's sibling first
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """The RFC 9162 §2.1.3.2 algorithm, independent of how the proof was built."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
