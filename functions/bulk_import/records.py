"""Dataclasses checked and written by pydantic-core alone, without pydantic's Python layer.

Naming pydantic's ``BaseModel`` loads the machinery that builds schemas in Python, and each
model then builds its own at import: together ~60 ms of a cold start, more than the handler's
whole import budget (README, "Cold start"). pydantic-core, which ``import pydantic`` loads
anyway, validates and serialises just the same from a core schema, and builds one in a tenth of a
millisecond. So a record is a plain dataclass, and its core schema is derived from its
annotations on first use: each field is declared once. A constraint or a validator goes in
``Annotated`` as the core schema itself, e.g. ``Annotated[int, core_schema.int_schema(ge=0)]``.

Only the types the package's records use are understood (str, int, float, bool, None, unions,
list, dict, Literal, nested records), and ``Annotated`` takes core schemas only; anything else
fails loudly on first use, in tests.

Unlike a pydantic model, a record built in code is a plain dataclass: its arguments are neither
validated nor copied (pass a copy of a list the caller goes on changing). Input from outside
goes through ``from_json`` / ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self, Union

from pydantic_core import CoreConfig, SchemaSerializer, SchemaValidator, core_schema

_SCALARS: dict[Any, Callable[[], core_schema.CoreSchema]] = {
    str: core_schema.str_schema,
    int: core_schema.int_schema,
    float: core_schema.float_schema,
    bool: core_schema.bool_schema,
    Any: core_schema.any_schema,
}


class Record:
    """Base of the package's dataclasses: JSON in and out through one pydantic-core schema."""

    __slots__ = ()

    # pydantic-core's config for the whole record (strictness, extra keys, stripping).
    core_config: ClassVar[CoreConfig] = CoreConfig()
    # Input names: e.g. ``str.upper`` reads a field ``chunk_size`` from ``CHUNK_SIZE``.
    alias_generator: ClassVar[Callable[[str], str] | None] = None

    @classmethod
    def from_json(cls, data: str | bytes) -> Self:
        """Parse and validate in one step; raises pydantic_core.ValidationError."""
        record: Self = validator_of(cls).validate_json(data)
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], context: Any = None) -> Self:
        record: Self = validator_of(cls).validate_python(data, context=context)
        return record

    def to_json(self, *, indent: int | None = None) -> bytes:
        return _serializer(type(self)).to_json(self, indent=indent)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars, as json.dumps takes them."""
        data: dict[str, Any] = _serializer(type(self)).to_python(self, mode="json")
        return data


# Built on first use, per class (a race builds one twice, harmlessly).
_VALIDATORS: dict[type[Record], SchemaValidator] = {}
_SERIALIZERS: dict[type[Record], SchemaSerializer] = {}


def validator_of(cls: type[Record]) -> SchemaValidator:
    """The record's pydantic-core validator, for callers that bind its methods once."""
    validator = _VALIDATORS.get(cls)
    if validator is None:
        validator = _VALIDATORS[cls] = SchemaValidator(schema_of(cls))
    return validator


def _serializer(cls: type[Record]) -> SchemaSerializer:
    serializer = _SERIALIZERS.get(cls)
    if serializer is None:
        serializer = _SERIALIZERS[cls] = SchemaSerializer(schema_of(cls))
    return serializer


def schema_of(cls: type[Record]) -> core_schema.CoreSchema:
    """The core schema of a record dataclass, from its fields' annotations and defaults."""
    hints = typing.get_type_hints(cls, include_extras=True)
    alias = cls.alias_generator
    fields = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # records are dataclasses
        schema = _schema_of_type(hints[field.name])
        check_default = field.metadata.get("validate_default")
        if field.default is not dataclasses.MISSING:
            schema = core_schema.with_default_schema(
                schema, default=field.default, validate_default=check_default
            )
        elif field.default_factory is not dataclasses.MISSING:
            schema = core_schema.with_default_schema(
                schema, default_factory=field.default_factory, validate_default=check_default
            )
        fields.append(
            core_schema.dataclass_field(
                field.name,
                schema,
                kw_only=True,
                validation_alias=alias(field.name) if alias else None,
                serialization_exclude=field.metadata.get("exclude"),
            )
        )
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    return core_schema.dataclass_schema(
        cls,
        core_schema.dataclass_args_schema(cls.__name__, fields),
        [field["name"] for field in fields],
        post_init=hasattr(cls, "__post_init__"),
        frozen=params.frozen,
        slots="__slots__" in cls.__dict__,
        config=CoreConfig(title=cls.__name__, **cls.core_config),
    )


def typed_dict_schema_of(cls: type[Any], config: CoreConfig) -> core_schema.CoreSchema:
    """The core schema of a TypedDict, derived the same way: it validates into a plain dict."""
    hints = typing.get_type_hints(cls, include_extras=True)
    # From the evaluated hints: under postponed annotations ``__required_keys__`` cannot see
    # ``NotRequired`` or ``Required``.
    fields = {
        name: core_schema.typed_dict_field(_schema_of_type(hint), required=_required(cls, hint))
        for name, hint in hints.items()
    }
    return core_schema.typed_dict_schema(
        fields, cls=cls, config=CoreConfig(title=cls.__name__, **config)
    )


def _required(cls: type[Any], hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.NotRequired:
        return False
    return origin is typing.Required or bool(getattr(cls, "__total__", True))


def _schema_of_type(hint: Any) -> core_schema.CoreSchema:  # noqa: PLR0911 - one per kind
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.NotRequired, typing.Required):
        return _schema_of_type(args[0])
    if origin is typing.Annotated:
        # The core schema itself, which states the type as well: anything else (pydantic's
        # Field, annotated_types' Ge) would be silently ignored here.
        schema = hint.__metadata__[0] if len(hint.__metadata__) == 1 else None
        if not (isinstance(schema, dict) and "type" in schema):
            raise TypeError(f"records.py takes one core schema in Annotated, not {hint!r}")
        return typing.cast(core_schema.CoreSchema, schema)
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        inner = (
            _schema_of_type(others[0])
            if len(others) == 1
            else core_schema.union_schema([_schema_of_type(a) for a in others])
        )
        return core_schema.nullable_schema(inner) if len(others) < len(args) else inner
    if origin is list:
        return core_schema.list_schema(_schema_of_type(args[0]))
    if origin is dict:
        return core_schema.dict_schema(_schema_of_type(args[0]), _schema_of_type(args[1]))
    if origin is Literal:
        return core_schema.literal_schema(list(args))
    if hint in _SCALARS:  # after the generic forms: those may not hash
        return _SCALARS[hint]()
    if isinstance(hint, type) and issubclass(hint, Record):
        return schema_of(hint)
    raise TypeError(f"records.py does not derive a core schema for {hint!r}")
