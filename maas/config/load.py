"""Reading ``deploy.yaml``: every problem reported at once, each naming its key path, the value
seen and what is allowed.

    maas validate deploy.yaml
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from maas.config.deploy import DeployConfig
from maas.errors import MaasError, field_path


class ConfigError(MaasError):
    """Raised with every problem found in a config file, one line each."""

    status = 400

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at ``loc`` (for listing allowed keys)."""
    cls: Any = DeployConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cls = args[0] if args and isinstance(args[0], type) else ann
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
    return cls


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = field_path(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        section = _section_at(loc)
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"{where}: unknown key; allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{where}: {message}, got {error.get('input')!r}"


def parse_config(data: Any, source: str = "<config>") -> DeployConfig:
    """Validate an already-parsed YAML document; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping of sections, got {data!r}"])
    try:
        return DeployConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str]) -> DeployConfig:
    """Read and validate a ``deploy.yaml``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"not valid YAML{at}: {problem}"]) from None
    return parse_config(data, str(path))
