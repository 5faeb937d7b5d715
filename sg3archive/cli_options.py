"""Click options generated from the job models' fields, so a flag never restates its field.

``job_options(Model, fields)`` turns each pydantic field into an option: ``shard_size`` becomes
``--shard-size``, its help is the field's description plus the model's default, a ``Literal``
becomes a ``click.Choice``, a bool an on/off pair. Every option defaults to None (unset), so a
manifest's value is only replaced by a flag the user actually typed; :func:`given_values` then
picks the typed ones out of the command's parameters, converted to the model's types.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line where the plain rule does not fit."""

    name: str | None = None  # e.g. "--out", or "--resume/--no-resume"; default: --field-name
    type: Any = None  # a click type for the typed text; default: from the field's annotation
    convert: Callable[[Any], Any] | None = None  # parsed text -> the model's value (raise click.BadParameter)
    multiple: bool = False  # repeatable; the values arrive as a list
    help: str | None = None  # replaces the field's description
    show_default: bool = True


def flag_name(field: str, flags: Mapping[str, Flag] | None = None) -> str:
    """The option spelling of ``field``: ``--shard-size`` unless ``flags`` names another."""
    custom = (flags or {}).get(field)
    return custom.name if custom and custom.name else "--" + field.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _click_type(annotation: Any) -> Any:
    """The click type for a field's annotation, or None when it needs a :class:`Flag`."""
    inner = _unwrap_optional(annotation)
    if get_origin(inner) is Literal:
        return click.Choice([str(v) for v in get_args(inner)])
    return {int: click.INT, float: click.FLOAT, str: click.STRING, bool: bool}.get(inner)


def _default_text(model: type[BaseModel], field: str, name: str) -> str:
    info = model.model_fields[field]
    if info.is_required() or info.default_factory is not None:
        return ""
    default = info.default
    if default is None:
        return ""
    if isinstance(default, bool):
        on, _, off = name.partition("/")
        return f" [default: {on if default else off or 'off'}]"
    if isinstance(default, tuple):
        return f" [default: {','.join(str(v) for v in default) or 'none'}]"
    return f" [default: {default}]"


def _help(model: type[BaseModel], field: str, custom: Flag | None, name: str) -> str:
    text = (custom.help if custom and custom.help else None) or model.model_fields[field].description or ""
    text = text[:1].upper() + text[1:]
    if text and not text.endswith("."):
        text += "."
    return text + (_default_text(model, field, name) if not custom or custom.show_default else "")


def job_options(model: type[BaseModel], fields: Sequence[str], *,
                flags: Mapping[str, Flag] | None = None) -> Callable[[F], F]:
    """A decorator adding one option per field of ``model`` (in ``fields``' order in ``--help``);
    each option's parameter is named as its field."""
    flags = flags or {}
    options = []
    for field in fields:
        if field not in model.model_fields:
            raise TypeError(f"{model.__name__} has no field {field!r}")
        custom = flags.get(field)
        annotation = model.model_fields[field].annotation
        click_type = custom.type if custom and custom.type is not None else _click_type(annotation)
        if click_type is None:
            raise TypeError(f"{model.__name__}.{field}: give a Flag with a type for {annotation}")
        if click_type is bool:
            name = custom.name if custom and custom.name else f"{flag_name(field)}/--no-{field.replace('_', '-')}"
            options.append(click.option(name, field, default=None, help=_help(model, field, custom, name)))
            continue
        name = flag_name(field, flags)
        options.append(click.option(name, field, type=click_type, default=None, multiple=bool(custom and custom.multiple),
                                    help=_help(model, field, custom, name)))

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def given_values(params: dict[str, Any], fields: Iterable[str], *,
                 flags: Mapping[str, Flag] | None = None) -> dict[str, Any]:
    """The ``fields`` the user gave on the command line (removed from ``params``), converted with
    their :class:`Flag`'s ``convert``; an unset option (None, or no repeats) is left out."""
    flags = flags or {}
    out: dict[str, Any] = {}
    for field in fields:
        value = params.pop(field, None)
        custom = flags.get(field)
        if custom and custom.multiple:
            value = list(value) if value else None
        if value is None:
            continue
        out[field] = custom.convert(value) if custom and custom.convert else value
    return out


__all__ = ["Flag", "flag_name", "given_values", "job_options"]
