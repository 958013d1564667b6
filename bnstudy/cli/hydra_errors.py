"""Hydra's errors in bnstudy's words: one line for a bad command line, and whether the user asked for tracebacks."""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from typing import Any

from bnstudy.config import RunConfig
from bnstudy.errors import BnstudyError, causes

FULL_ERROR_ENV = "BNSTUDY_FULL_ERROR"  # the user's HYDRA_FULL_ERROR, for jobs (train() sets Hydra's to 1)


def full_error() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1); train() keeps the answer in FULL_ERROR_ENV."""
    return os.environ.get(FULL_ERROR_ENV, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def _field_type(key: str) -> Any:
    """The declared type of a dotted RunConfig key (``train.steps``), or None."""
    cls: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(part)
    return cls


def _unknown_key(full_key: str) -> str | None:
    parent, _, leaf = full_key.rpartition(".")
    cls = _field_type(parent) if parent else RunConfig
    if not dataclasses.is_dataclass(cls):
        return None
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(leaf, valid, n=1)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{close[0]}? " if close else ""
    return f"unknown config key '{full_key}'; {hint}valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"


def _wrong_type(full_key: str, message: str) -> str:
    key = re.sub(r"\[\d+\]$", "", full_key)
    t = _field_type(key)
    if key != full_key and typing.get_args(t):
        t = typing.get_args(t)[0]  # an element of a list
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    want = kinds.get(t, "a list of numbers" if typing.get_origin(t) in (tuple, list) else "of another type")
    got = re.match(r"Value '(.*?)' ", message)
    return f"{full_key} must be {want} (got {got.group(1) if got else 'something else'!r})"


def _composition_error(message: str) -> str | None:
    """Hydra's words for a sweep value without -m, or a removed key, as one line naming the key."""
    m = re.match(r"Ambiguous value for argument '([^=']+)=(.*?)'", message)
    if m:
        return f"{m[1]}={m[2]} is a sweep: add -m (--multirun) to run one job per value"
    m = re.match(r"Error merging override ~([\w.]+)", message)
    if m and _field_type(m[1]) is not None:
        return f"{m[1]} cannot be removed (~{m[1]}): every run needs it; set a value instead ({m[1]}=VALUE)"
    return None


def _unquoted(override: str) -> str | None:
    """A value that Hydra's grammar reads only in quotes (a space, a non-ASCII letter such as é): the line saying how."""
    key, eq, value = override.partition("=")
    if not eq or not any(c.isspace() or not c.isascii() for c in value) or value[:1] in ("'", '"'):
        return None
    return (f"{override}: Hydra reads a value with a space or a non-ASCII letter only in quotes; quote it inside the "
            f"shell's quotes: '{key}=\"{value}\"'")


def command_line_error(e: BaseException) -> str | None:
    """One line for a bad command line (an unknown option or key, a value of the wrong type), else None."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    for x in causes(e):
        if isinstance(x, BnstudyError):
            return str(x)
        if isinstance(x, ConfigCompositionException) and _composition_error(str(x)):
            return _composition_error(str(x))
        if isinstance(x, MissingConfigException) and x.options is not None and x.missing_cfg_file:
            group, _, name = x.missing_cfg_file.rpartition("/")
            mine = "; a YAML of your own: add its folder with hydra.searchpath=[file://DIR] (docs/plugins.md)" if group == "norm" else ""
            return f"unknown {group} '{name}'; choose one of: {', '.join(x.options)}{mine}"
        if isinstance(x, (ConfigAttributeError, ConfigKeyError)) and getattr(x, "full_key", None):
            return _unknown_key(x.full_key)
        if isinstance(x, ValidationError) and getattr(x, "full_key", None):
            return _wrong_type(x.full_key, str(x))
        if isinstance(x, OverrideParseException):
            return _unquoted(x.override) or ": ".join(str(x).splitlines()[:2])
    return None
