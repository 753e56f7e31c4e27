"""Per-tool payload checkers for the free-form kinds, built when the policy compiles.

A ``json_schema`` tool's schema file is read (relative to the policy directory, never
outside it), parsed strictly and compiled once; a schema that does not compile is a
policy error at the schema file's line (``file:line: tools.X.schema_file: ...``).
"""

from __future__ import annotations

from pathlib import Path

from ..payloads import FreeFormValidator, SchemaProblem, compile_schema, load_schema_text
from ..policy_models import FREE_PAYLOADS, PolicyDocument
from .loader import PathKey, PolicySource, _FileReader, dotted


def schema_path(directory: Path, name: str) -> Path | None:
    """The schema file a tool names, or None when it would leave the policy directory."""
    root = directory.resolve()
    path = (root / name).resolve()
    return path if path == root or root in path.parents else None


def free_form_checkers(
    document: PolicyDocument, source: PolicySource | None
) -> tuple[dict[str, FreeFormValidator], list[str], dict[str, bytes]]:
    """(checker by tool name, problems as 'file:line: path: message', schema file bytes by
    tool name for the policy version)."""
    checkers: dict[str, FreeFormValidator] = {}
    problems: list[str] = []
    schema_bytes: dict[str, bytes] = {}
    for name, tool in document.tools.items():
        if tool.payload not in FREE_PAYLOADS:
            continue
        if tool.payload != "json_schema":
            checkers[name] = FreeFormValidator(tool.payload, tool.max_bytes, tool.max_depth)
            continue
        key: PathKey = ("tools", name, "schema_file")
        where = source.locate(key) if source is not None else ""
        at = f"{where}: {dotted(key)}" if where else dotted(key)
        assert tool.schema_file is not None  # the model requires it for json_schema
        if source is None or source.directory is None:
            problems.append(f"{at}: a json_schema tool needs a policy loaded from a directory")
            continue
        path = schema_path(source.directory, tool.schema_file)
        if path is None:
            problems.append(f"{at}: {tool.schema_file} is outside the policy directory")
            continue
        shown = str(source.directory / tool.schema_file)
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{at}: cannot read {shown}: {exc}")
            continue
        schema_bytes[name] = raw
        try:
            validator = compile_schema(load_schema_text(text))
        except SchemaProblem as exc:
            pointer = "".join(f"/{p}" for p in exc.path)
            problems.append(
                f"{_schema_line(shown, text, exc)}: {dotted(key)}: "
                + (f"{tool.schema_file} at {pointer}: " if pointer else f"{tool.schema_file}: ")
                + exc.message
            )
            continue
        checkers[name] = FreeFormValidator(
            "json_schema", tool.max_bytes, tool.max_depth, validator, tool.schema_file
        )
    return checkers, problems, schema_bytes


def _schema_line(shown: str, text: str, problem: SchemaProblem) -> str:
    """``schema.json:LINE`` of the problem (of its nearest enclosing node)."""
    if problem.line is not None:
        return f"{shown}:{problem.line}"
    lines: dict[PathKey, str] = {}
    # JSON is YAML's flow style: the policy loader's composer gives each node its line.
    _FileReader(shown, lines, []).read(text)
    where = f"{shown}:1"
    for end in range(len(problem.path), -1, -1):
        found = lines.get(tuple(problem.path[:end]))
        if found is not None:
            return found
    return where
