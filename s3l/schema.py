"""Types and ranges of every setting, declared once and checked before any work is done.

A schema is a dataclass (or a class whose `__init__` is typed the same way) whose annotations say what each
setting may hold: `int`, `float` (an int is accepted), `bool`, `str`, `Literal[...]` choices, `list[...]`,
`tuple[...]` (a list of that many items), `X | None`, a nested schema, and `Annotated[..., Range(...)]` for bounds. `check` walks a composed config
node against it and raises one S3LError line for the first setting that does not fit, naming its full key,
its value and what it must be. A new setting gets its check by being declared with its type; a key the
schema does not know is refused too (a typo, or a `+key=` that nothing would read).

Why not Hydra's structured configs: they check types at composition, but not ranges, and Hydra reports a
failure as a multi-line block after composition failed; here every problem is one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from s3l.errors import S3LError
from s3l.models.resnet import ARCHITECTURES, STEMS
from s3l.optim import LR_SCHEDULES


@dataclass(frozen=True)
class Range:
    """Bounds of a number: `low < value` (or <= when `low_inclusive`) and `value <= high`."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def problem(self, value: float) -> str | None:
        """Why `value` is out of range, or None."""
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return self._describe()
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            return self._describe()
        return None

    def _describe(self) -> str:
        if self.high is None:
            return f"must be {'>=' if self.low_inclusive else '>'} {self.low:g}"
        if self.low is None:
            return f"must be {'<=' if self.high_inclusive else '<'} {self.high:g}"
        left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
        return f"must be in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Range(0, low_inclusive=False)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1)  # a probability, a momentum, an EMA decay

PositiveInt = Annotated[int, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]
UnitFloat = Annotated[float, UNIT]
Architecture = Literal[ARCHITECTURES]  # type: ignore[valid-type]
Stem = Literal[STEMS]  # type: ignore[valid-type]
StemChoice = Literal[(*STEMS, "auto")]  # type: ignore[valid-type]  # auto: settled before a run (validate.py)
LRSchedule = Literal[LR_SCHEDULES]  # type: ignore[valid-type]

_MISSING = object()


def settings_of(schema: Any) -> dict[str, tuple[Any, Any]]:
    """{name: (annotation, default or _MISSING)} of a schema dataclass, of a class's typed `__init__` (following
    `**kwargs` to the parent classes' `__init__`, so a subclass lists what it passes on too) or of a function."""
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema, include_extras=True)
        return {f.name: (hints[f.name], _default_of(f)) for f in dataclasses.fields(schema)}
    functions = [klass.__init__ for klass in schema.__mro__ if "__init__" in vars(klass)] if isinstance(
        schema, type) else [schema]
    settings: dict[str, tuple[Any, Any]] = {}
    for function in functions:
        hints = typing.get_type_hints(function, include_extras=True)
        parameters = inspect.signature(function).parameters.values()
        for p in parameters:
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                settings.setdefault(p.name, (hints.get(p.name, Any), _MISSING if p.default is p.empty else p.default))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return settings


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _MISSING


def check(node: DictConfig, schema: Any, key: str, ignore: tuple[str, ...] = (),
          supplied: tuple[str, ...] = (), what: str = "") -> None:
    """Raise S3LError (one line) for the first setting of `node` that `schema` does not accept.

    `schema`: a dataclass, a class or function (its typed parameters), or a list of them (their union).
    `key` is the node's full key, used in the message ("stages.finetune"); `ignore` names keys of the node
    that belong to someone else (e.g. Hydra's `_target_`); `supplied` names parameters that the caller
    passes itself, so the node need not hold them; `what` names the node in messages (default: `key`).
    """
    settings: dict[str, tuple[Any, Any]] = {}
    for one in schema if isinstance(schema, list) else [schema]:
        for name, setting in settings_of(one).items():
            settings.setdefault(name, setting)
    for name in node:
        if name not in settings and name not in ignore:
            valid = [name for name in settings if name not in supplied]
            raise S3LError(
                f"{_join(key, name)} is not a setting of {what or key or 'the config'}; valid: {', '.join(valid)}"
            )
    for name, (annotation, default) in settings.items():
        full = _join(key, name)
        if name in node.keys() and OmegaConf.is_missing(node, name):
            raise S3LError(f"{full} must be set (it is ???): pass {full}=<value>")
        if name not in node:
            if default is _MISSING and name not in supplied:
                raise S3LError(f"{full} is not set: add it to the config or pass {full}=<value>")
            continue
        check_value(node[name], annotation, full)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def check_value(value: Any, annotation: Any, key: str) -> None:
    """Raise S3LError if `value` does not fit `annotation` (see the module docstring)."""
    problem = _problem(value, annotation, key)
    if problem:
        raise S3LError(problem)


def _problem(value: Any, annotation: Any, key: str) -> str | None:
    if annotation is Any:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        problem = _problem(value, args[0], key)
        if problem:
            return problem
        for bound in args[1:]:
            why = bound.problem(value) if isinstance(bound, Range) else None
            if why:
                return f"{key}={_show(value)} {why}"
        return None
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [_problem(value, option, key) for option in options]
        if not all(problems):
            return None
        # The value has the type of one option but breaks its bounds: say that, not the list of types.
        typed = [p for option, p in zip(options, problems) if not _problem(value, _unannotated(option), key)]
        if typed or len(options) == 1:
            return (typed or problems)[0]
        return f"{key}={_show(value)} must be {_expected(annotation)}"
    if origin is Literal:
        if value not in args:
            return f"{key}={_show(value)} must be one of {', '.join(dict.fromkeys(str(a) for a in args))}"
        return None
    if origin is list:
        if not isinstance(value, ListConfig | list):
            return f"{key}={_show(value)} must be a list"
        return next((p for i, item in enumerate(value) if (p := _problem(item, args[0], f"{key}[{i}]"))), None)
    if origin is dict:  # free keys (e.g. a root per dataset name), each value checked
        if not isinstance(value, DictConfig | dict):
            return f"{key}={_show(value)} must be a group of settings"
        return next((p for name, item in value.items() if (p := _problem(item, args[1], f"{key}.{name}"))), None)
    if origin is tuple:  # a fixed number of items, e.g. tuple[float, float] for a (low, high) range
        if not isinstance(value, ListConfig | list | tuple) or len(value) != len(args):
            return f"{key}={_show(value)} must be a list of {len(args)} items"
        return next((p for i, (item, a) in enumerate(zip(value, args)) if (p := _problem(item, a, f"{key}[{i}]"))),
                    None)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, DictConfig):
            return f"{key}={_show(value)} must be a group of settings ({', '.join(settings_of(annotation))})"
        try:
            check(value, annotation, key)
        except S3LError as error:
            return str(error)
        return None
    if not _is_instance(value, annotation):
        return f"{key}={_show(value)} must be {_expected(annotation)}"
    return None


def _unannotated(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _is_instance(value: Any, annotation: Any) -> bool:
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _expected(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _expected(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_expected(a) for a in args))
    if origin is Literal:
        return "one of " + ", ".join(dict.fromkeys(str(a) for a in args))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a group of settings"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        return str(OmegaConf.to_container(value))
    return str(value)
