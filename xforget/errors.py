"""The errors every layer raises for the user, and one-line messages for Hydra/OmegaConf errors.

:class:`ConfigError` is a configuration problem (exit code 2 in every command).

A typo must fail with the bad key *and* the valid keys of its node, which
Hydra's own messages do not list:
``unknown config key 'model.positon'; valid keys of model: [...]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, get_args, get_type_hints


class ConfigError(ValueError):
    """A configuration problem; its message is one line meant for the user (commands exit with code 2)."""


def schema_keys(schema: type, node_path: str, node_types: dict[str, type] | None = None) -> list[str] | None:
    """Keys of the dataclass node at ``node_path`` ('' = root) of ``schema``, or None if untyped.

    ``node_types`` names the dataclass of fields whose default is not one
    (e.g. a ``data`` field declared as ``Any``).
    """
    node: Any = schema
    for part in [p for p in node_path.split(".") if p]:
        if not is_dataclass(node):
            return None
        match = {f.name: f for f in fields(node)}.get(part)
        if match is None:
            return None
        default = match.default_factory() if callable(match.default_factory) else match.default  # type: ignore[misc]
        node = type(default) if is_dataclass(default) else (node_types or {}).get(part, _optional_node(node, part, default))
    return [f.name for f in fields(node)] if is_dataclass(node) else None


def _optional_node(parent: type, name: str, default: Any) -> Any:
    """The dataclass of an ``Optional[SomeDataclass]`` field whose default is None, else ``default``."""
    try:
        hint = get_type_hints(parent).get(name)
    except (NameError, TypeError):  # an annotation that does not resolve: untyped
        return default
    inner = [a for a in get_args(hint) if is_dataclass(a)]
    return inner[0] if inner else default


def explain_error(exc: BaseException, keys_of: Callable[[str], list[str] | None]) -> str:
    """One line for a composition error; ``keys_of(node_path)`` gives the valid keys of a node."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in chain:
        if isinstance(err, (ConfigAttributeError, ConfigKeyError)) and getattr(err, "full_key", None):
            full_key = str(err.full_key)
            parent = full_key.rpartition(".")[0]
            keys = keys_of(parent)
            if keys is not None:
                return f"unknown config key '{full_key}'; valid keys of {parent or 'the top level'}: {keys}"
            return f"unknown config key '{full_key}' ({first_line(err)})"
    for err in chain:
        if isinstance(err, ValidationError) and getattr(err, "full_key", None):
            return f"invalid value for '{err.full_key}': {first_line(err)}"
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"bad config key '{err.full_key}': {first_line(err)}"
    for err in chain:
        if isinstance(err, ConfigCompositionException):
            options = re.search(r"Available options in '([^']+)':\s*\n((?:\t.*\n?)+)", str(err))
            if options:
                names = [o.strip() for o in options.group(2).splitlines() if o.strip()]
                return f"{first_line(err)}. Available options in '{options.group(1)}': {names}"
            text = str(err).split("Config search path")[0]
            return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type name)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
