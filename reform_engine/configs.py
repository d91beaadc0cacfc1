"""Job configs as flags, argv and JSON: one description of a setting serves all three.

A job config is a dataclass whose fields carry their help in ``field(metadata={"help": ...})`` (TRL's
``HfArgumentParser`` way); that help is what ``--help`` prints. A field may itself be a config
(``runtime: Runtime``, ``decoding: DecodingConfig``): its fields become prefixed flags,
``--runtime.device cpu``, ``--decoding.k 5``, and nested dicts in JSON. A nested field's
``set_by_job`` names the sub-fields its job fills in itself (a pipeline gives each stage its runtime
and data): they are no flags, and a value given for them is replaced.

    flags(cls)                  every flag of a config class: dotted path, type, default, help, choices
    add_config_args(parser, cls), config_from_args(cls, args)    argparse, for the CLI
    config_argv(config)         the flags that rebuild ``config`` (jobs.command_line)
    config_from_dict(cls, d)    a config from its JSON (the store's job rows, run directories' config.json)

A config whose own fields moved into nested groups, under the same names, lists those groups in a
``MOVED_INTO: ClassVar[tuple[str, ...]]``; ``config_from_dict`` then puts an old flat key into the
group that has it, so JSON stored before the move still loads (AttackConfig).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable


class JobConfigError(ValueError):
    """A job config that cannot be built: an unknown job, field or value, with what to do instead."""

    def __init__(self, message: str, fix: str = ""):
        self.message, self.fix = message, fix
        super().__init__(message + (f" Fix: {fix}" if fix else ""))


def refuse(config: object, checks: list[tuple[bool, str]]) -> None:
    """Raise ValueError with the first failed check's message, named after the config that holds the
    setting (a config's ``__post_init__`` lists its checks as (ok, what to do instead))."""
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{type(config).__name__}: {message}")


# --------------------------------------------------------------------------- declaring fields

def setting(default: Any, help: str, **meta: Any) -> Any:
    """A config field with a default and its help (``choices=...`` lists the values it takes)."""
    return field(default=default, metadata={"help": help, **meta})


def required(help: str, **meta: Any) -> Any:
    """A config field without a default: a required flag."""
    return field(metadata={"help": help, **meta})


def nested(factory: Callable[[], Any], help: str, set_by_job: tuple[str, ...] = ()) -> Any:
    """A field that is itself a config, ``factory()`` its default; ``set_by_job``: its sub-fields the job fills in."""
    return field(default_factory=factory, metadata={"help": help, "set_by_job": tuple(set_by_job)})


def is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _plain(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True): the type a flag parses, and whether 'none' is a value too."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), type(None) in typing.get_args(tp)
    return tp, False


def _or_none(tp: Any) -> Callable[[str], Any]:
    """The flag type of an optional field: 'none' is None, anything else a ``tp``."""
    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else tp(text)
    parse.__name__ = tp.__name__  # argparse names the type in its error message
    return parse


# --------------------------------------------------------------------------- flags

@dataclass(frozen=True)
class Flag:
    path: tuple[str, ...]                   # ("decoding", "k")
    type: Any
    default: Any                            # MISSING: a required flag
    help: str
    choices: tuple | None = None
    group: str = ""                         # the nested config it belongs to ('' = the job's own)
    optional: bool = False                  # None is a value too, spelt 'none'

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def option(self) -> str:
        return "--" + ".".join(p.replace("_", "-") for p in self.path)


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (a fresh one from its factory); MISSING when it has none."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flags(cls: type, defaults: Any = None, prefix: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> list[Flag]:
    """Every flag of config class ``cls``, nested configs flattened (their defaults from the parent's
    default instance); the sub-fields a parent sets itself (``set_by_job``) are left out."""
    hints = typing.get_type_hints(cls)
    out: list[Flag] = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name) if defaults is not None else field_default(f)
        tp, optional = _plain(hints[f.name])
        if is_config(tp):
            sub = default if default is not MISSING else None
            out += flags(tp, sub, prefix + (f.name,), f.metadata.get("set_by_job", ()))
        else:
            out.append(Flag(prefix + (f.name,), tp, default, f.metadata.get("help", ""), f.metadata.get("choices"),
                            ".".join(prefix), optional))
    return out


def parse_bool(text: str) -> bool:
    """'true'/'1'/'yes' or 'false'/'0'/'no' (any case); anything else is a usage error."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a yes/no value; use true or false")
    return value


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of ``cls`` (``--group.flag`` for a nested config's), with its help and default."""
    groups: dict[str, Any] = {}
    for flag in flags(cls):
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group, _group_help(cls, flag.path[:-1])) if flag.group else parser
        kwargs: dict[str, Any] = {"dest": flag.dest, "help": flag.help.replace("%", "%%")}
        if flag.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = flag.default
            kwargs["help"] += f" (default: {_spelt(flag.default)})".replace("%", "%%")
        if flag.type is bool:  # '--flag' alone means true; '--flag false' still works
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="true|false")
        else:
            kwargs.update(type=_or_none(flag.type) if flag.optional else flag.type)
            if not flag.choices:  # argparse shows the choices themselves
                kwargs["metavar"] = flag.path[-1].upper()
        if flag.choices:
            kwargs["choices"] = list(flag.choices)
        groups[flag.group].add_argument(flag.option, **kwargs)


def _group_help(cls: type, path: tuple[str, ...]) -> str:
    """The help of the nested config at ``path`` (the field that holds it)."""
    about = ""
    for name in path:
        found = {f.name: f for f in dataclasses.fields(cls)}[name]
        about, cls = found.metadata.get("help", ""), _plain(typing.get_type_hints(cls)[name])[0]
    return about


def _spelt(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    return repr(value) if value == "" else str(value)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config the parsed flags describe (raises the config's own ValueError for a bad value)."""
    values: dict[str, Any] = {}
    for flag in flags(cls):
        node = values
        for part in flag.path[:-1]:
            node = node.setdefault(part, {})
        node[flag.path[-1]] = getattr(args, flag.dest)
    return config_from_dict(cls, values)


def config_argv(config: Any) -> list[str]:
    """``--path=value`` for every flag of ``config`` (a None value of a field that cannot be None keeps
    the flag's default); the '=' form keeps values that start with '-' values."""
    argv = []
    for flag in flags(type(config)):
        value = config
        for part in flag.path:
            value = getattr(value, part)
        if value is not None or flag.optional:
            argv.append(f"{flag.option}={str(value).lower() if value is None or isinstance(value, bool) else value}")
    return argv


# --------------------------------------------------------------------------- JSON

def config_from_dict(cls: type, data: Any, defaults: Any = None) -> Any:
    """A ``cls`` from a dict of its fields (nested configs as nested dicts); a missing field takes its
    default (a nested config's, its parent's default instance's). Unknown fields and a dict where a
    value belongs raise JobConfigError; a bad value, the config's own ValueError."""
    if not isinstance(data, dict):
        raise JobConfigError(f"a {cls.__name__} is given as a {type(data).__name__}.",
                             fix=f"pass a {cls.__name__} or a dict of its fields.")
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    data = _regrouped(cls, data, fields_, hints)
    unknown = sorted(set(data) - set(fields_))
    if unknown:
        raise JobConfigError(f"{cls.__name__} has no field(s) {unknown}.", fix=f"use fields of {cls.__name__}.")
    kwargs = {}
    for name, f in fields_.items():
        tp = _plain(hints[name])[0]
        base = getattr(defaults, name) if defaults is not None else None
        if name in data:
            value = data[name]
            if is_config(tp):
                if base is None and f.default_factory is not MISSING:
                    base = f.default_factory()
                value = value if isinstance(value, tp) else config_from_dict(tp, value, base)
            elif isinstance(value, dict):
                raise JobConfigError(f"{cls.__name__}.{name} is a value, not a group of fields.", fix=f"give {name} one value.")
            kwargs[name] = value
        elif defaults is not None:
            kwargs[name] = base
    return cls(**kwargs)


def _regrouped(cls: type, data: dict, fields_: dict, hints: dict) -> dict:
    """``data`` with each old flat key of ``cls.MOVED_INTO``'s groups moved into its group's dict; a
    setting given both ways is refused (which one was meant is unknown)."""
    out = dict(data)
    for group in getattr(cls, "MOVED_INTO", ()):
        names = {f.name for f in dataclasses.fields(_plain(hints[group])[0])}
        moved = {k: out.pop(k) for k in list(out) if k in names and k not in fields_}
        if not moved:
            continue
        given = out.get(group, {})
        both = sorted(moved) if not isinstance(given, dict) else sorted(set(moved) & set(given))
        if both:
            raise JobConfigError(f"{cls.__name__} is given {both} both in {group} and outside it.",
                                 fix=f"give them once, in {group}.")
        out[group] = {**moved, **given}
    return out
