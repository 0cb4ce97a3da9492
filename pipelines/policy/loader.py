"""Load one policy YAML file into a pydantic model, refusing bad files with a message a DPO can act on.

Every refusal is a `PolicyError` naming the file, the key path inside it (``purposes[3].retention.archive``),
the line when it can be found, and what is wrong. Other policy modules (purposes, datasets, recipients,
pseudonymisation) share this loader so all policy files fail the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

M = TypeVar("M", bound=pydantic.BaseModel)


class PolicyError(ValueError):
    """A policy file that cannot be accepted: names the file, the key, the line (if known) and the problem."""

    def __init__(self, file: Path | str, key: str, problem: str, line: int | None = None) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.line = line
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key or '<document>'}: {problem}")


def format_key_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``purposes[3].retention.archive``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node of `loc` found in the composed YAML tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if part == "[key]":  # pydantic's marker for a refused mapping key: the line is the key's
            break
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


# libyaml's parser when PyYAML was built with it: the same YAML, parsed about ten times faster (every step of a
# run loads the policy folder).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=_LOADER)


def _parse_yaml(path: Path) -> tuple[Any, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read policy file ({exc.strerror})") from exc
    try:
        return yaml.load(text, Loader=_LOADER), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(path, "", f"malformed YAML: {problem}",
                          line=mark.line + 1 if mark else None) from exc


def load_policy_file(path: Path, model: type[M]) -> M:
    """Parse `path` with the safe loader and validate it as `model`; raise PolicyError on the first problem."""
    path = Path(path)
    data, text = _parse_yaml(path)
    if not isinstance(data, dict):
        raise PolicyError(path, "", "expected a mapping at the top of the file", line=1)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        # The node tree (for the line) is composed only for a file that is refused.
        raise PolicyError(path, format_key_path(loc), f"{err['msg']}{more}", line=_line_of(_compose(text), loc)
                          ) from exc


def locate(path: Path, loc: tuple[int | str, ...]) -> int | None:
    """Line of a key path in an already-valid file, for cross-file errors raised after model validation."""
    try:
        return _line_of(_compose(Path(path).read_text(encoding="utf-8")), loc)
    except (OSError, yaml.YAMLError):
        return None
