"""Payload validation: shadow updates, config patches and command payloads (validated
against device types), and the free-form kinds any, json and json_schema.

Built once per policy from its device types (``PayloadValidators.build``); the
per-packet path calls a prebuilt validator and returns a ``PayloadVerdict``.
"""

from .freeform import FreeFormValidator, SchemaProblem, compile_schema, load_schema_text
from .jsondoc import (
    MAX_CLIENT_TOKEN_BYTES,
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    parse_json,
    parse_object,
)
from .merge import merge_patch
from .validators import PayloadValidators, PayloadVerdict

__all__ = [
    "FreeFormValidator",
    "SchemaProblem",
    "compile_schema",
    "load_schema_text",
    "parse_json",
    "MAX_CLIENT_TOKEN_BYTES",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "PayloadValidators",
    "PayloadVerdict",
    "merge_patch",
    "parse_object",
]
