"""Typed configuration machinery: a tree of dataclasses loaded from YAML with CLI overrides.

The tree itself (:class:`kudos.rl.experiment.KudosConfig`) lives above the components whose
sections it holds; this module knows none of them. A config file mirrors the dataclass tree::

    env:
      task: StaircaseLvl3
      num_envs: 16

and overrides use dotted paths: ``env.num_envs=32``. Unknown keys and values of the wrong type
are reported in one line naming the key (:class:`~kudos.errors.ConfigError`), and so are values
outside a ``Literal[...]`` field's choices. Tuples are written as YAML lists (``[16, 32]``). Keys
that moved keep loading through an alias table (old dotted path -> new), with one warning line.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from kudos.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"{key}: expected {len(item_types)} items, got {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return converted
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown option {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a component's own validation: say which section it was
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path, raw = text.split("=", 1)
    return path.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _move(data: dict[str, Any], old: list[str], new: list[str]) -> bool:
    """Move the value at dotted path ``old`` of the raw tree ``data`` to ``new``; False if absent."""
    node: Any = data
    for key in old[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or old[-1] not in node:
        return False
    value = node.pop(old[-1])
    target = data
    for key in new[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{'.'.join(new[:-1])}: expected a mapping, got {target!r}")
    target.setdefault(new[-1], value)  # a value already at the new key wins
    return True


def canonical_key(path: str, aliases: dict[str, str]) -> str:
    """Dotted ``path`` with a moved key (or section) replaced by its new one from ``aliases``."""
    for old, new in aliases.items():
        if path == old or path.startswith(old + "."):
            return new + path[len(old):]
    return path


def _renamed(keys: list[str], aliases: dict[str, str]) -> list[str]:
    """Override path ``keys`` under their new name, with a deprecation warning if they moved."""
    path = ".".join(keys)
    new = canonical_key(path, aliases)
    if new != path:
        log.warning("config key %s is deprecated: use %s", path, new)
    return new.split(".")


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
    aliases: dict[str, str] | None = None, prepare: Callable[[dict[str, Any]], None] | None = None,
) -> T:
    """Build ``cls`` from an optional YAML file, then apply ``key.path=value`` overrides.

    ``aliases``: old dotted key -> new one, for keys that moved; the file's and the overrides'
    old keys load as the new ones (each with one deprecation warning line). ``prepare``: edits
    the raw tree (file and overrides merged) before it is built, e.g. to expand a preset.
    """
    aliases = aliases or {}
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
        for old, new in aliases.items():
            if _move(data, old.split("."), new.split(".")):
                log.warning("config file %s: key %s is deprecated: use %s", path, old, new)
    for text in overrides or []:
        keys, value = _parse_override(text)
        keys = _renamed(keys, aliases)
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    if prepare is not None:
        prepare(data)
    return _build(cls, data)


def dump_config(config: Any) -> str:
    """``config`` (a dataclass tree) as the YAML :func:`load_config` reads back."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
