"""Payload validation: shadow updates, config patches and command payloads.

Built once per policy from its device types (``PayloadValidators.build``); the
per-packet path calls a prebuilt validator and returns a ``PayloadVerdict``.
"""

from .jsondoc import MAX_CLIENT_TOKEN_BYTES, MAX_DEPTH, MAX_DOCUMENT_BYTES, parse_object
from .merge import merge_patch
from .validators import PayloadValidators, PayloadVerdict

__all__ = [
    "MAX_CLIENT_TOKEN_BYTES",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "PayloadValidators",
    "PayloadVerdict",
    "merge_patch",
    "parse_object",
]
