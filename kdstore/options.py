"""The machinery of the configs (not a config itself): options declared once (`opt`: default,
help and field policies), and the command line generated from them.

Each command's options are the fields of its config dataclass (`opt`: default and help written
once); `click_options` turns them into click options, so defaults, help and choices live in one
place. `config.json` (what a run resolved) round-trips: `train --config` reads it back."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.metadata
import json
import platform
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from kdstore.errors import KdstoreError

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], *, ignore: Iterable[str] = (), where: str = "") -> T:
    """Build config dataclass `cls` from `values` (a config file): an unknown key (except those in
    `ignore`) or a value of the wrong type is a one-line error naming it; None keeps the default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = with_new_names(cls, values)
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
    was: str | None = None,
    **policies: Any,
) -> Any:
    """A config field: its default and its help text, written once; the command line's option is
    generated from it (`click_options`). `choices` (a registry's keys, or a function giving them)
    are listed in the help and offered by shell completion; the config's validate() refuses others
    in one line. A bool field defaulting to True becomes the flag `--no-NAME` (or `flag`).
    `was` is the field's name before a rename: the old option, keyword and config.json key still
    work for one release, with a one-line deprecation note (`old_names`).

    `policies` record how the field is treated beyond its value, each named in the config's
    `POLICIES` (e.g. whether it may change on --resume); every list of field names that a command
    needs is derived from them (`with_policy`), and tests check that every field declares them."""
    meta = {
        "help": help,
        "choices": choices,
        "required": required,
        "flag": flag,
        "path": path,
        "was": was,
        "policies": policies,
    }
    return dataclasses.field(default=default, metadata=meta)


# ---- renamed options: the old names work for one release ------------------------------------------

REMOVAL = "0.3"  # the release that drops the old names


def renamed(cls: type) -> dict[str, str]:
    """{old name: new name} of config dataclass `cls`'s renamed fields (`opt(was=...)`)."""
    return {f.metadata["was"]: f.name for f in dataclasses.fields(cls) if f.metadata.get("was")}


def deprecation(old: str, new: str, *, option: bool) -> str:
    """The one-line note an old name gets (as an option `--old`, or as a keyword/key `old`)."""
    if option:
        old, new = f"--{old.replace('_', '-')}", f"--{new.replace('_', '-')}"
    return f"{old} is deprecated and will be removed in kdstore {REMOVAL}: use {new}"


def with_new_names(cls: type, values: dict[str, Any], *, warn: int = 0) -> dict[str, Any]:
    """`values` (keyword arguments, a config.json) with `cls`'s old field names replaced by the new
    ones; giving both is a one-line error. With `warn` (the caller's stack level, counted from
    here), a DeprecationWarning per old name."""
    old = renamed(cls)
    if not old.keys() & values.keys():
        return values
    out = dict(values)
    for was, name in old.items():
        if was not in out:
            continue
        if name in out:
            raise KdstoreError(f"{was} and {name} are one option ({was} is its old name): give {name} only")
        if warn:
            warnings.warn(deprecation(was, name, option=False), DeprecationWarning, stacklevel=warn)
        out[name] = out.pop(was)
    return out


def old_names(cls: type[T]) -> type[T]:
    """Class decorator: `cls(old=...)` (and `dataclasses.replace`) still accept the old name of a
    renamed field, with a DeprecationWarning."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **with_new_names(cls, kwargs, warn=3))

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


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
    not valid UTF-8 (undecodable bytes, which logs and TensorBoard cannot write), a symlink loop,
    a path under a file (its nearest existing parent is not a directory). Each names the option
    and the value as given, never a path the command would derive from it."""
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
            continue
        parent = next((p for p in Path(value).expanduser().absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            out.append(f"{option} {value}: {parent} is a file, not a directory")
    return out


_A_TYPE = {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string"}


def click_options(
    cls: type, skip: Iterable[str] = (), only: Iterable[str] | None = None
) -> Callable[[Callable], Callable]:
    """Click options for the fields of config dataclass `cls` (help, defaults and choices from
    the fields themselves), in field order; a renamed field's old name is a hidden option that
    still works (`opt(was=...)`)."""
    import click

    skip, only = set(skip), set(only) if only is not None else None
    wanted = [f for f in dataclasses.fields(cls) if f.name not in skip and (only is None or f.name in only)]
    old = {f.metadata["was"]: f for f in wanted if f.metadata.get("was")}

    def apply(fn: Callable) -> Callable:
        if old:
            fn = _taking_old_names(fn, {was: f.name for was, f in old.items()})
        for was, f in old.items():  # hidden: the help lists the new names only
            kind = click.Path() if f.metadata.get("path") else _base_type(f)
            note = f"Deprecated: the old name of --{f.name.replace('_', '-')}."
            fn = click.option(f"--{was.replace('_', '-')}", f"_was_{was}", type=kind, hidden=True, help=note)(fn)
        for f in reversed(wanted):
            fn = _click_option(f)(fn)
        return fn

    return apply


def _click_option(f: dataclasses.Field) -> Callable[[Callable], Callable]:
    """The click option of config field `f`."""
    import click

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
    required = bool(meta.get("required"))
    # no default at all for a required option: click 8.3+ takes an explicit default=None as given
    default: dict[str, Any] = {} if required else {"default": f.default}
    return click.option(
        f"--{dash}",
        f.name,
        type=click.Path() if meta.get("path") else typ,
        required=required,
        show_default=f.default is not None and not required,
        help=text,
        shell_complete=complete,
        **default,
    )


def _taking_old_names(fn: Callable, old: dict[str, str]) -> Callable:
    """`fn` (a click command's callback) with each old option's value moved to its new name, a
    one-line deprecation note on stderr; the old and the new option together are a usage error."""
    import click

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        for was, name in old.items():
            value = kwargs.pop(f"_was_{was}", None)
            if value is None:
                continue
            if name in given([name]):
                raise click.UsageError(
                    f"--{was.replace('_', '-')} is the old name of --{name.replace('_', '-')}: give one"
                )
            click.echo(f"note: {deprecation(was, name, option=True)}", err=True)
            kwargs[name] = value
            ctx.meta.setdefault("kdstore.old_names_given", set()).add(name)
        return fn(*args, **kwargs)

    return wrapper


def given(names: Iterable[str]) -> set[str]:
    """Which of the current click command's options were given on the command line."""
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context()
    by_old_name = ctx.meta.get("kdstore.old_names_given", set())
    return {n for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE or n in by_old_name}


def fields_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `cls` (e.g. a config.json that also records
    the resolved model and data)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def differing(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The keys whose values differ between two recorded configurations (sorted)."""
    skip = set(ignore)
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))
