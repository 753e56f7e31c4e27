"""Load a policy directory into a validated :class:`PolicyDocument`, with file:line errors.

Every ``*.yaml`` / ``*.yml`` file at the top level of the directory (sorted) is one part
of the policy. Sub-folders are not read, so a policy kept in a folder inside another is
never merged by surprise; ``PolicySource.ignored`` lists the YAML files skipped that way
so ``policy check`` and ``run`` can warn.

Each file is a mapping whose top-level keys are among the sections (``device_types``,
``tenants``, ``tools``, ``agents``, ``approvals``, ``limits``, ``anomaly``); sections are
merged across files, and one entry (say ``tenants.acme``) defined in two files is an error
naming both places.

Line numbers come from PyYAML's composed node tree (``SafeLoader`` compose), so every
problem reads ``path/to/file.yaml:LINE: dotted.path: message`` (1-based lines).

Anchors, aliases and merge keys (``<<``) are allowed: after composition they are plain
nodes, so they cannot smuggle anything the models would not see. Duplicate keys in one
mapping are an error (PyYAML would silently keep the last one, hiding a typo).

An empty directory loads as an empty policy; the compiled policy then denies
everything (deny by default; ``iot-guard run`` refuses to start without agents). A
directory that does not exist is an error.

Every problem is reported in one pass: cross references (an agent naming an unknown
tool) are checked even when some entries are invalid, over the entries that are valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from ..policy_error import PolicyError
from ..policy_models import PolicyDocument

SECTIONS = ("device_types", "tenants", "tools", "agents", "approvals", "limits", "anomaly")

PathKey = tuple[str | int, ...]

# Plain (unquoted) scalars YAML 1.1 resolves to booleans although they look like words.
_BOOL_WORDS = frozenset(
    w for base in ("yes", "no", "on", "off", "y", "n") for w in (base, base.title(), base.upper())
)


def _is_yaml(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") and path.is_file()


def policy_files(directory: Path) -> list[Path]:
    """The policy's files: the directory's top-level YAML files, sorted."""
    return sorted(p for p in Path(directory).glob("*") if _is_yaml(p))


def nested_yaml_files(directory: Path) -> list[Path]:
    """YAML files in sub-folders: not part of the policy (only the top level is read)."""
    return sorted(
        p for p in Path(directory).glob("*/**/*") if _is_yaml(p) and not p.name.startswith(".")
    )


def dotted(path: PathKey) -> str:
    """``("tools", "x", "topics", 0)`` -> ``tools.x.topics.0``."""
    return ".".join(str(p) for p in path)


@dataclass
class PolicySource:
    """A loaded policy and where each of its YAML nodes came from."""

    document: PolicyDocument
    files: list[Path]
    directory: Path | None = None
    # YAML files in sub-folders, which are not read: worth a warning, never merged.
    ignored: list[Path] = field(default_factory=list)
    # path of a node -> "file:line" (mapping entries point at their key's line)
    _lines: dict[PathKey, str] = field(default_factory=dict, repr=False)

    def locate(self, path: PathKey) -> str:
        """``file:line`` of the node at ``path``, or of its nearest existing ancestor."""
        return _locate(self._lines, path)

    def rule(self, path: PathKey) -> str:
        """``file:line (dotted.path)``: how a decision names the rule it matched."""
        where = self.locate(path)
        return f"{where} ({dotted(path)})" if where else dotted(path)


def _locate(lines: dict[PathKey, str], path: PathKey) -> str:
    for end in range(len(path), 0, -1):
        where = lines.get(tuple(path[:end]))
        if where is not None:
            return where
    return ""


# libyaml's parser when PyYAML was built with it: ~10x faster on a large fleet registry,
# and its nodes carry the same marks (line numbers).
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _FileReader:
    """Composes one YAML file and records each node's path -> file:line."""

    def __init__(self, shown: str, lines: dict[PathKey, str], problems: list[str]):
        self.shown = shown
        self.lines = lines
        self.problems = problems
        self.bool_words: set[PathKey] = set()
        self._keys = yaml.SafeLoader("")  # constructs non-string scalar keys only

    def _key(self, node: yaml.Node) -> object:
        """A mapping key as the constructed document will hold it (so paths line up)."""
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:str":
                return node.value
            try:
                key = self._keys.construct_object(node, deep=True)
            except yaml.YAMLError:
                return node.value
            finally:
                self._keys.constructed_objects.clear()
            return key if isinstance(key, (str, int, bool, float)) else node.value
        return ("<complex key>", id(node))

    def where(self, node: yaml.Node) -> str:
        return f"{self.shown}:{node.start_mark.line + 1}"

    def read(self, text: str) -> dict[object, object] | None:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return {}  # an empty file is an empty part
            self._check(node, (), set())
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            self.problems.append(f"{self.shown}{line}: YAML syntax error: {exc.problem}")
            return None
        except yaml.YAMLError as exc:  # pragma: no cover - PyYAML errors are marked
            self.problems.append(f"{self.shown}: YAML error: {exc}")
            return None
        finally:
            loader.dispose()
        if not isinstance(data, dict):
            self.problems.append(
                f"{self.shown}:1: a policy file must be a mapping of sections {SECTIONS}"
            )
            return None
        return data

    def _check(self, node: yaml.Node, path: PathKey, active: set[int]) -> None:
        """Record lines, refuse duplicate keys, note unquoted yes/no/on/off booleans."""
        if id(node) in active:
            # A recursive alias: constructing it would build a cyclic structure.
            raise yaml.constructor.ConstructorError(None, None, "recursive alias", node.start_mark)
        self.lines.setdefault(path, self.where(node))
        if isinstance(node, yaml.MappingNode):
            active.add(id(node))
            seen: dict[object, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._check(value_node, path, active)
                    continue
                key = self._key(key_node)
                if key in seen:
                    self.problems.append(
                        f"{self.where(key_node)}: {dotted(path + (str(key),))}: duplicate key "
                        f"(first defined at line {seen[key].start_mark.line + 1})"
                    )
                    continue
                seen[key] = key_node
                # Keys are str for the policy's models; other scalars only reach errors.
                child: PathKey = path + (key,)  # type: ignore[operator]
                self.lines.setdefault(child, self.where(key_node))
                self._check(value_node, child, active)
                if key == "topic" and len(path) == 2 and path[0] == "tools":
                    # `topic:` is shorthand for `topics: [..]`; validation reports `topics`.
                    self.lines.setdefault(path + ("topics",), self.where(key_node))
                    self.lines.setdefault(path + ("topics", 0), self.where(value_node))
            active.discard(id(node))
        elif isinstance(node, yaml.SequenceNode):
            active.add(id(node))
            for i, item in enumerate(node.value):
                self._check(item, path + (i,), active)
            active.discard(id(node))
        elif (
            isinstance(node, yaml.ScalarNode)
            and node.tag == "tag:yaml.org,2002:bool"
            and not node.style  # plain: None (PyYAML) or "" (libyaml)
            and node.value in _BOOL_WORDS
        ):
            self.bool_words.add(path)


def load_policy_source(directory: Path | str) -> PolicySource:
    """Load and validate every policy file under ``directory``; raise :class:`PolicyError`."""
    root = Path(directory)
    if not root.is_dir():
        raise PolicyError([f"{directory}: not a directory"])
    files = policy_files(root)
    problems: list[str] = []
    lines: dict[PathKey, str] = {}
    bool_words: set[PathKey] = set()
    merged: dict[str, dict[object, object]] = {name: {} for name in SECTIONS}
    # (section, entry) -> where it was first defined, to name both places of a clash
    defined_at: dict[tuple[str, object], str] = {}
    for path in files:
        shown = str(root / path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{shown}: cannot read: {exc}")
            continue
        file_lines: dict[PathKey, str] = {}
        reader = _FileReader(shown, file_lines, problems)
        data = reader.read(text)
        if data is None:
            continue
        bool_words |= reader.bool_words
        accepted: set[tuple[object, object]] = set()
        for section, entries in data.items():
            here = file_lines.get((section,), f"{shown}:1") if isinstance(section, str) else shown
            if section not in SECTIONS:
                problems.append(
                    f"{here}: {section}: unknown section; expected one of {', '.join(SECTIONS)}"
                )
                continue
            if entries is None:
                continue  # `tools:` with nothing under it: an empty section
            if not isinstance(entries, dict):
                problems.append(f"{here}: {section}: must be a mapping of names to entries")
                continue
            lines.setdefault((section,), here)
            for name, entry in entries.items():
                entry_at = file_lines.get((section, name), here)
                first = defined_at.get((section, name))
                if first is not None:
                    problems.append(
                        f"{entry_at}: {section}.{name}: defined twice (also at {first})"
                    )
                    continue
                defined_at[(section, name)] = entry_at
                merged[section][name] = entry
                accepted.add((section, name))
        for key, where in file_lines.items():
            if len(key) >= 2 and (key[0], key[1]) in accepted:
                lines.setdefault(key, where)
    # YAML-level problems (syntax, duplicate keys, an entry defined twice) mean the merged
    # data is not what the operator meant: cross references would only add noise.
    structural = bool(problems)
    document: PolicyDocument | None = None
    checked: PolicyDocument
    invalid: list[PathKey] = []
    try:
        document = checked = PolicyDocument.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, merged, lines, bool_words))
        invalid = [_clean_loc(e["loc"], merged)[0] for e in exc.errors(include_url=False)]
        checked = _valid_part(merged)
    # Cross references over what is valid, so one pass reports every problem.
    for path_key, message in [] if structural else checked.reference_problems():
        if any(
            bad[: len(path_key) - 1] == path_key[:-1] or path_key[: len(bad)] == bad
            for bad in invalid
        ):
            continue  # inside an entry whose own problem is reported: not a second one
        problem = f"{_locate(lines, path_key)}: {dotted(path_key)}: {message}"
        if problem not in problems:
            problems.append(problem)
    if problems:
        raise PolicyError(problems)
    assert document is not None
    return PolicySource(
        document=document, files=files, directory=root, ignored=nested_yaml_files(root),
        _lines=lines,
    )


def _valid_part(merged: dict[str, dict[object, object]]) -> PolicyDocument:
    """The merged policy rebuilt from its valid parts, for the cross-reference checks.

    An entry that does not validate keeps its valid fields (and, in a map of entries, its
    valid entries), so it still answers for the names it defines; what is invalid in it has
    been reported already and takes part in no reference check.
    """
    sections: dict[str, object] = {}
    for section, entries in merged.items():
        annotation = PolicyDocument.model_fields[section].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # A section that is one model (approvals): its keys are the model's fields.
            sections[section] = _partial(annotation, entries) or annotation.model_construct()
        else:  # a map of named entries (device_types, tenants, tools, agents)
            model: type[BaseModel] = get_args(annotation)[1]
            sections[section] = {name: _partial(model, e) for name, e in entries.items()}
    return PolicyDocument.model_construct(**sections)  # type: ignore[arg-type]


def _partial(model: type[BaseModel], raw: object) -> BaseModel | None:
    try:
        return model.model_validate(raw)
    except ValidationError:
        pass
    if not isinstance(raw, dict):
        return None
    values: dict[str, object] = {}
    for name, info in model.model_fields.items():
        if name not in raw:
            continue
        try:
            # The FieldInfo carries the field's constraints (max_length, ge, ...).
            field_type = Annotated[info.annotation, info]  # type: ignore[name-defined]
            values[name] = TypeAdapter(field_type).validate_python(raw[name], strict=True)
            continue
        except ValidationError:
            pass
        args = get_args(info.annotation)
        inner = args[1] if len(args) == 2 else None
        if isinstance(raw[name], dict) and isinstance(inner, type) and issubclass(
            inner, BaseModel
        ):
            # A map of entries (devices, commands): keep each valid one by name.
            values[name] = {
                k: _partial(inner, v) or inner.model_construct() for k, v in raw[name].items()
            }
    for name, info in model.model_fields.items():
        if name not in values and info.is_required():
            # Nothing valid to keep: an empty stand-in (its problem is reported already).
            origin = get_origin(info.annotation)
            values[name] = [] if origin is list else {} if origin is dict else None
    return model.model_construct(**values)  # type: ignore[arg-type]


def load_policy(directory: Path | str) -> PolicyDocument:
    """The validated document only (see :func:`load_policy_source`)."""
    return load_policy_source(directory).document


def _validation_problems(
    exc: ValidationError,
    data: object,
    lines: dict[PathKey, str],
    bool_words: set[PathKey],
) -> list[str]:
    problems: list[str] = []
    seen: set[tuple[PathKey, str]] = set()
    # For a union (e.g. enum: list[str] | list[int]) pydantic reports every branch;
    # one branch's complaints are enough for an operator, so keep the first branch only.
    first_branch: dict[PathKey, str] = {}
    for error in exc.errors(include_url=False):
        path, tag = _clean_loc(error["loc"], data)
        if tag is not None:
            prefix = path[: tag[0]]
            if first_branch.setdefault(prefix, tag[1]) != tag[1]:
                continue
        message = error["msg"]
        if error["type"] in ("value_error", "assertion_error") and "error" in error.get(
            "ctx", {}
        ):
            # Our validators' own sentence, without pydantic's "Value error, " prefix.
            message = str(error["ctx"]["error"])
        if error["type"] == "missing" or error["type"] == "extra_forbidden":
            message = {"missing": "required field is missing", "extra_forbidden": "unknown key"}[
                error["type"]
            ]
        if path in bool_words:
            message += ' (YAML reads an unquoted yes/no/on/off as a boolean: quote it, e.g. "off")'
        key = (path, message)
        if key in seen:
            continue
        seen.add(key)
        where = _locate(lines, path)
        problems.append(
            f"{where}: {dotted(path)}: {message}" if where else f"{dotted(path)}: {message}"
        )
    return problems


def _clean_loc(loc: tuple[int | str, ...], data: object) -> tuple[PathKey, tuple[int, str] | None]:
    """Pydantic's error loc as a path into the data, dropping union/key tags.

    Returns the path and, if a union branch tag was dropped, (position, tag).
    """
    path: list[str | int] = []
    tag: tuple[int, str] | None = None
    node: object = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        if in_dict or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]  # type: ignore[index]
        elif part == "[key]":
            continue  # the error is about the key itself: point at the entry
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "float")):
            if tag is None:
                tag = (len(path), part)
        else:
            path.append(part)  # a missing field: name it under its parent
            node = None
    return tuple(path), tag
