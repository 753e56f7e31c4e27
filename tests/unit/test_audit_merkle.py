"""RFC 6962 tree hash and RFC 9162 inclusion proofs, against the published test vectors."""

from __future__ import annotations

import hashlib

import pytest

from iot_guard.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    inclusion_proof,
    leaf_hash,
    node_hash,
    tree_root,
    verify_inclusion,
)

# The Certificate Transparency reference leaves and tree heads for sizes 0..8 (data).
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
CT_PROOFS = {
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}


def test_hashes_are_domain_separated() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    left, right = b"a" * 32, b"b" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()


def test_frontier_roots_match_the_reference_tree_heads() -> None:
    frontier = Frontier()
    assert frontier.root() == CT_ROOTS[0]
    leaves = [leaf_hash(d) for d in CT_LEAVES]
    for n, leaf in enumerate(leaves, 1):
        frontier.append(leaf)
        assert frontier.root() == CT_ROOTS[n], f"size {n}"
        assert tree_root(leaves[:n]) == CT_ROOTS[n], f"size {n}"


def test_frontier_stays_logarithmic_and_agrees_with_the_definition() -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(300)]
    frontier = Frontier()
    for n, leaf in enumerate(leaves, 1):
        frontier.append(leaf)
        assert len(frontier.nodes) == n.bit_count()
        if n < 80 or n in (128, 255, 256, 257, 300):
            assert frontier.root() == tree_root(leaves[:n]), f"size {n}"


def test_a_frontier_restored_from_its_nodes_continues_the_same_tree() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(40)]
    first = Frontier()
    for leaf in leaves[:23]:
        first.append(leaf)
    restored = Frontier(23, first.nodes)
    for leaf in leaves[23:]:
        restored.append(leaf)
    assert restored.root() == tree_root(leaves)
    with pytest.raises(ValueError):
        Frontier(23, first.nodes[:-1])  # 23 = 0b10111 needs four subtree roots


def test_append_leaves_is_append_of_each_leaf() -> None:
    # append_leaves inlines node_hash for speed: it must build the same tree, in batches of
    # any size from any starting size (every carry pattern of the frontier's low bits up to
    # 70; the reference vectors pin the size 8).
    leaves = [leaf_hash(b"line %d" % i) for i in range(70)]
    one_by_one = Frontier()
    batched = Frontier()
    start = 0
    for size in (0, 1, 2, 3, 5, 8, 13, 21, 17):
        batch = leaves[start:start + size]
        for leaf in batch:
            one_by_one.append(leaf)
        batched.append_leaves(batch)
        start += size
        assert batched == one_by_one, f"after {start} leaves"
        assert batched.root() == tree_root(leaves[:start])
    single = Frontier()
    for i, leaf in enumerate(leaves):
        single.append_leaves([leaf])
        assert single.root() == tree_root(leaves[:i + 1]), f"after {i + 1} leaves"
    data = Frontier()
    data.append_leaves([leaf_hash(line) for line in CT_LEAVES])
    assert data.root() == CT_ROOTS[len(CT_LEAVES)]


@pytest.mark.parametrize(("index", "size"), sorted(CT_PROOFS))
def test_inclusion_proofs_match_the_reference(index: int, size: int) -> None:
    leaves = [leaf_hash(d) for d in CT_LEAVES]
    proof = inclusion_proof(leaves, index, size)
    assert [p.hex() for p in proof] == CT_PROOFS[(index, size)]
    assert verify_inclusion(leaves[index], index, size, proof, CT_ROOTS[size])


def test_every_proof_verifies_and_tampered_ones_do_not() -> None:
    leaves = [leaf_hash(f"record-{i}".encode()) for i in range(33)]
    for size in range(1, len(leaves) + 1):
        root = tree_root(leaves[:size])
        for index in range(size):
            proof = inclusion_proof(leaves, index, size)
            assert verify_inclusion(leaves[index], index, size, proof, root)
            other = (index + 1) % size
            if other != index:
                assert not verify_inclusion(leaves[other], index, size, proof, root)
                assert not verify_inclusion(leaves[index], other, size, proof, root)
            assert not verify_inclusion(leaves[index], index, size, proof, EMPTY_ROOT)
            assert not verify_inclusion(leaves[index], index, size, [*proof, root], root)
            if proof:
                assert not verify_inclusion(leaves[index], index, size, proof[:-1], root)
    assert not verify_inclusion(leaves[0], 5, 5, [], leaves[0])  # index beyond the tree
