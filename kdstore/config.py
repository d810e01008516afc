"""Frozen configurations, one per command, and the command line generated from them.

Each command's options are the fields of its config dataclass (`opt`: default and help written
once); `click_options` turns them into click options, so defaults, help and choices live in one
place. `config.json` (what a run resolved) round-trips: `train --config` reads it back."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build dataclass `cls` from `values`; unknown keys are refused, None keeps the default."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}")
    return cls(**{k: v for k, v in values.items() if v is not None})  # type: ignore[call-arg]


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


PACKAGES = ("kdstore", "torch", "torchvision", "timm", "ffcv", "numpy", "h5py")


def provenance() -> dict[str, Any]:
    """What a run's config.json records beside its options: the versions it ran with and the
    command line that started it."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def opt(default: Any = None, help: str = "", *, choices: Callable[[], Sequence[str]] | Sequence[str] | None = None,
        required: bool = False, flag: str | None = None, path: bool = False) -> Any:
    """A config field: its default and its help text, written once; the command line's option is
    generated from it (`click_options`). `choices` (a registry's keys, or a function giving them)
    are listed in the help and offered by shell completion; the config's validate() refuses others
    in one line. A bool field defaulting to True becomes the flag `--no-NAME` (or `flag`)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "required": required, "flag": flag, "path": path})


def _choices(f: dataclasses.Field) -> list[str]:
    c = f.metadata.get("choices")
    return list(c() if callable(c) else c) if c is not None else []


def _base_type(f: dataclasses.Field) -> type:
    name = str(f.type).replace(" ", "").replace("|None", "").replace("None|", "")
    return {"int": int, "float": float, "bool": bool, "str": str}.get(name, str)


def click_options(cls: type, skip: Iterable[str] = (), only: Iterable[str] | None = None) -> Callable[[Callable], Callable]:
    """Click options for the fields of config dataclass `cls` (help, defaults and choices from
    the fields themselves), in field order."""
    import click

    skip, only = set(skip), set(only) if only is not None else None
    wanted = [f for f in dataclasses.fields(cls) if f.name not in skip and (only is None or f.name in only)]

    def option(f: dataclasses.Field):
        meta, dash = f.metadata, f.name.replace("_", "-")
        text, typ, choices = meta.get("help", ""), _base_type(f), _choices(f)
        if typ is bool:
            if f.default is True:  # on by default: the option turns it off
                return click.option(meta.get("flag") or f"--no-{dash}", f.name, is_flag=True, flag_value=False, default=True, help=f"Turn off: {text}")
            return click.option(f"--{dash}", f.name, is_flag=True, default=False, help=text)
        if choices:
            text = f"{text} One of: {', '.join(choices)}." if text else f"One of: {', '.join(choices)}."
        complete = (lambda ctx, param, incomplete, c=tuple(choices): [x for x in c if x.startswith(incomplete)]) if choices else None
        kind = click.Path() if meta.get("path") else typ
        required = bool(meta.get("required"))
        return click.option(f"--{dash}", f.name, type=kind, default=None if required or f.default is None else f.default,
                            required=required, show_default=f.default is not None and not required, help=text, shell_complete=complete)

    def apply(fn: Callable) -> Callable:
        for f in reversed(wanted):
            fn = option(f)(fn)
        return fn

    return apply


def given(names: Iterable[str]) -> set[str]:
    """Which of the current click command's options were given on the command line."""
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {n for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}


def fields_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `cls` (e.g. a config.json that also records
    the resolved model and data)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def differing(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The keys whose values differ between two recorded configurations (sorted)."""
    skip = set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))
