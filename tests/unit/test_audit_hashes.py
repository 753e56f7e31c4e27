"""The audit chain's SHA-256 calls (iot_guard/audit/hashes.py) against RFC 6962 §2.1,
computed here with hashlib: the Python definitions and, when built (``make test`` builds
it: test_native.py checks), the C module that takes their place."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_guard.audit import hashes

PYTHON = SimpleNamespace(leaf_hash=hashes.py_leaf_hash, node_hash=hashes.py_node_hash,
                         hex_sha256=hashes.py_hex_sha256)
IMPLEMENTATIONS = [pytest.param(PYTHON, id="python")]
if hashes.NATIVE:
    from iot_guard.audit import _chainhash

    IMPLEMENTATIONS.append(pytest.param(_chainhash, id="native"))


def rfc_leaf(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def rfc_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# Around the sizes that matter: empty, SHA-256's 64-byte block and its padding edge, a
# typical 775-byte audit line, either side of the size hashed without the GIL, and large.
SIZES = [0, 1, 55, 56, 63, 64, 65, 775, 2047, 2048, 2049, 1 << 20]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("size", SIZES)
def test_each_call_is_its_rfc_6962_definition_at_every_size(impl: Any, size: int) -> None:
    data = bytes((i * 7 + size) & 0xFF for i in range(size))
    other = data[::-1][:32] or b"\x01" * 32
    assert impl.leaf_hash(data) == rfc_leaf(data)
    assert impl.node_hash(data, other) == rfc_node(data, other)
    assert impl.node_hash(other, data) == rfc_node(other, data)
    assert impl.hex_sha256(data) == hashlib.sha256(data).hexdigest().encode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(line=st.binary(max_size=2048), left=st.binary(max_size=40),
       right=st.binary(max_size=40))
def test_any_bytes_hash_as_defined(impl: Any, line: bytes, left: bytes, right: bytes) -> None:
    assert impl.leaf_hash(line) == rfc_leaf(line)
    assert impl.node_hash(left, right) == rfc_node(left, right)
    assert impl.hex_sha256(line) == hashlib.sha256(line).hexdigest().encode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_leaf_never_hashes_like_a_node_of_the_same_bytes(impl: Any) -> None:
    """The 0x00/0x01 prefixes: the leaf of L||R is not the node over L and R."""
    left, right = b"L" * 32, b"R" * 32
    assert impl.leaf_hash(left + right) != impl.node_hash(left, right)
    assert impl.leaf_hash(b"") != hashlib.sha256(b"").digest()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_other_bytes_like_objects_hash_as_their_bytes(impl: Any, kind: type) -> None:
    line = b'{"seq":0}'
    assert impl.leaf_hash(kind(line)) == rfc_leaf(line)
    assert impl.node_hash(kind(line), kind(b"x")) == rfc_node(line, b"x")
    assert impl.hex_sha256(kind(line)) == hashlib.sha256(line).hexdigest().encode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("call", [
    lambda h: h.leaf_hash("a line"),
    lambda h: h.hex_sha256("a payload"),
    lambda h: h.node_hash(b"x", "y"),
    lambda h: h.leaf_hash(None),
])
def test_text_and_other_objects_are_a_type_error(impl: Any, call: Callable[[Any], Any]) -> None:
    with pytest.raises(TypeError):
        call(impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_calls_take_their_arguments_by_position_only(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.node_hash(b"x")
    with pytest.raises(TypeError):
        impl.node_hash(b"x", b"y", b"z")
    with pytest.raises(TypeError):
        impl.leaf_hash(line=b"x")
    with pytest.raises(TypeError):
        impl.hex_sha256(data=b"x")
    with pytest.raises(TypeError):
        impl.node_hash(b"x", right=b"y")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_refused_call_lets_go_of_the_buffers_it_took(impl: Any) -> None:
    """An error on the second argument releases the first: a bytearray still exported
    could not be resized (BufferError)."""
    left = bytearray(b"left")
    with pytest.raises(TypeError):
        impl.node_hash(left, "right")
    left.extend(b" grown")  # raises BufferError if a view of it was left behind
    assert impl.leaf_hash(left) == rfc_leaf(b"left grown")


def test_threads_hashing_at_once_each_get_their_own_digest() -> None:
    """The C module reuses one context under the GIL and gives large inputs their own
    without it: threads mixing both sizes, and all three calls, must never see each
    other's state."""
    small = [bytes([i]) * (100 + i) for i in range(32)]
    large = [bytes([i]) * (70_000 + i) for i in range(4)]
    expected = {line: (rfc_leaf(line), rfc_node(line, line[:32]),
                       hashlib.sha256(line).hexdigest().encode()) for line in small + large}
    wrong: list[bytes] = []

    def work(lines: list[bytes]) -> None:
        for _ in range(50):
            for line in lines:
                got = (hashes.leaf_hash(line), hashes.node_hash(line, line[:32]),
                       hashes.hex_sha256(line))
                if got != expected[line]:
                    wrong.append(line)

    threads = [threading.Thread(target=work, args=(small,)) for _ in range(3)]
    threads += [threading.Thread(target=work, args=(large,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a hashing thread did not finish in 60 s"
    assert wrong == []
