"""The machinery of the configs (not a config itself): options declared once (`opt`: default,
help and field policies), and the command line generated from them.

Each command's options are the fields of its config dataclass (`opt`: default and help written
once); `click_options` turns them into click options, so defaults, help and choices live in one
place. `config.json` (what a run resolved) round-trips: `train --config` reads it back."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from kdstore.errors import KdstoreError

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], *, ignore: Iterable[str] = (), where: str = "") -> T:
    """Build config dataclass `cls` from `values` (a config file): an unknown key (except those in
    `ignore`) or a value of the wrong type is a one-line error naming it; None keeps the default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields) - set(ignore))
    source = f"{where}: " if where else ""
    if unknown:
        close = [difflib.get_close_matches(k, fields, 1) for k in unknown]
        hint = "".join(f" (did you mean {c[0]}?)" for c in close[:1] if c)
        raise KdstoreError(f"{source}unknown option(s) {', '.join(unknown)} for {cls.__name__}{hint}")
    kept = {k: v for k, v in values.items() if k in fields and v is not None}
    for name, value in kept.items():
        expected = _BASE_TYPES.get(_type_name(fields[name]))
        if expected is None:  # not a plain option (e.g. a nested config): the class checks it
            continue
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise KdstoreError(f"{source}{name} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return cls(**{k: float(v) if _base_type(fields[k]) is float else v for k, v in kept.items()})


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


PACKAGES = ("kdstore", "torch", "torchvision", "timm", "ffcv", "numpy", "h5py")


PROVENANCE_KEYS = ("versions", "command")  # what provenance() returns


def provenance() -> dict[str, Any]:
    """What a run's config.json records beside its options: the versions it ran with and the
    command line that started it."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    record = {"versions": versions, "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    assert tuple(record) == PROVENANCE_KEYS
    return record


def opt(
    default: Any = None,
    help: str = "",
    *,
    choices: Callable[[], Sequence[str]] | Sequence[str] | None = None,
    required: bool = False,
    flag: str | None = None,
    path: bool = False,
    **policies: Any,
) -> Any:
    """A config field: its default and its help text, written once; the command line's option is
    generated from it (`click_options`). `choices` (a registry's keys, or a function giving them)
    are listed in the help and offered by shell completion; the config's validate() refuses others
    in one line. A bool field defaulting to True becomes the flag `--no-NAME` (or `flag`).

    `policies` record how the field is treated beyond its value, each named in the config's
    `POLICIES` (e.g. whether it may change on --resume); every list of field names that a command
    needs is derived from them (`with_policy`), and tests check that every field declares them."""
    meta = {"help": help, "choices": choices, "required": required, "flag": flag, "path": path, "policies": policies}
    return dataclasses.field(default=default, metadata=meta)


def opt_from(cls: type, name: str, **policies: Any) -> Any:
    """Field `name` of config `cls` (its default, help and choices) as a field of another config,
    with that config's own `policies`: one option, written once, shared by two configs (e.g.
    `train`'s data options are the public loader's, kdstore.loader.LoaderConfig)."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    meta = {**source.metadata, "policies": policies}
    return dataclasses.field(default=source.default, metadata=meta)


def with_policy(cls: type, policy: str, *values: Any) -> tuple[str, ...]:
    """The names of `cls`'s fields whose `policy` is one of `values`, in field order."""
    allowed = getattr(cls, "POLICIES", {}).get(policy)
    if allowed is None:
        raise ValueError(f"{cls.__name__} has no policy {policy!r}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{cls.__name__}: {policy} takes {allowed}, not {bad}")
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("policies", {}).get(policy) in values)


def undeclared(cls: type) -> list[str]:
    """`field: policy` for every policy of cls.POLICIES a field does not declare with an allowed value."""
    out = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get("policies", {})
        for policy, allowed in getattr(cls, "POLICIES", {}).items():
            if declared.get(policy) not in allowed:
                out.append(f"{f.name}: {policy}")
        out += [f"{f.name}: unknown policy {p}" for p in declared if p not in getattr(cls, "POLICIES", {})]
    return out


def _choices(f: dataclasses.Field) -> list[str]:
    c = f.metadata.get("choices")
    return list(c() if callable(c) else c) if c is not None else []


_BASE_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _type_name(f: dataclasses.Field) -> str:
    return str(f.type).replace(" ", "").replace("|None", "").replace("None|", "")


def _base_type(f: dataclasses.Field) -> type:
    return _BASE_TYPES.get(_type_name(f), str)


def type_problems(cfg: Any) -> list[str]:
    """One line per field of config dataclass `cfg` whose value is not of the field's type (an int
    field given 2.5 or "x", a bool given "no", None where the field takes none), naming the option
    as the command line spells it: the Python API is checked as the CLI's parser checks."""
    out = []
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), _type_name(f)
        if name not in _BASE_TYPES:
            continue
        if value is None:
            if "None" not in str(f.type):
                out.append(f"--{f.name.replace('_', '-')} must be {_A_TYPE[name]}, got None")
            continue
        want = _BASE_TYPES[name]
        ok = (
            isinstance(value, bool)
            if want is bool
            else isinstance(value, (int, float) if want is float else want) and not isinstance(value, bool)
        )
        if not ok:
            out.append(f"--{f.name.replace('_', '-')} must be {_A_TYPE[name]}, got {value!r}")
    return out


def path_problems(cfg: Any) -> list[str]:
    """One line per path option of `cfg` that no file can be made at or read from: a name that is
    not valid UTF-8 (undecodable bytes, which logs and TensorBoard cannot write), a symlink loop."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not f.metadata.get("path") or not isinstance(value, str):
            continue
        option = f"--{f.name.replace('_', '-')}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            out.append(f"{option} {value!r} is not valid UTF-8 (undecodable bytes in the name); name it in UTF-8")
            continue
        try:
            Path(value).expanduser().resolve()
        except (RuntimeError, OSError) as e:
            out.append(f"{option} {value} cannot be resolved ({getattr(e, 'strerror', None) or e}: a symlink loop?)")
    return out


_A_TYPE = {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string"}


def click_options(
    cls: type, skip: Iterable[str] = (), only: Iterable[str] | None = None
) -> Callable[[Callable], Callable]:
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
                return click.option(
                    meta.get("flag") or f"--no-{dash}",
                    f.name,
                    is_flag=True,
                    flag_value=False,
                    default=True,
                    help=f"Turn off: {text}",
                )
            return click.option(f"--{dash}", f.name, is_flag=True, default=False, help=text)
        if choices:
            text = f"{text} One of: {', '.join(choices)}." if text else f"One of: {', '.join(choices)}."
        complete = (
            (lambda ctx, param, incomplete, c=tuple(choices): [x for x in c if x.startswith(incomplete)])
            if choices
            else None
        )
        kind = click.Path() if meta.get("path") else typ
        required = bool(meta.get("required"))
        return click.option(
            f"--{dash}",
            f.name,
            type=kind,
            default=None if required or f.default is None else f.default,
            required=required,
            show_default=f.default is not None and not required,
            help=text,
            shell_complete=complete,
        )

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
