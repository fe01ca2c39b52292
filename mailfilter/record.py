"""Records (frozen or not) with what the project uses of `dataclasses`, at a fraction of its import cost.

Why not the standard module: `mailfilter pipe` without a worker defines some forty record classes
(config sections, the model, the policy's rules) before it reads a message, in a new process for every
message. `dataclasses.dataclass` compiles five or six functions per class with exec(), about 0.6 ms a
class on this project's test machine, and importing it pulls in `inspect` (another 5 ms): together a
fifth of that fallback's start-up (bench/ measures it). Here every class shares the same few
functions, so making a class costs microseconds; making an instance costs a little more than with
`dataclasses` (a loop instead of generated code: microseconds per message, where there are a few dozen).

What is kept: fields in annotation order; defaults, `field(default=..., default_factory=...,
metadata=...)`; `frozen` (assignment raises FrozenInstanceError, an AttributeError); `eq` (compares
the field values of two instances of the same class), a hash for frozen records that compare, none for
mutable ones; a `Name(field=value, ...)` repr; `__post_init__`; `__match_args__`; `fields()` and
`replace()`. Methods a class defines itself are kept. What is not: ClassVar / InitVar, inheritance
between records, `order`, `slots`, `kw_only` (nothing here uses them: a class that needs them uses
`dataclasses`).
"""

from __future__ import annotations

from typing import Any


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class Field:
    """One field: its name and annotation (a string under `from __future__ import annotations`), default or factory, metadata."""

    __slots__ = ("default", "default_factory", "metadata", "name", "type")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, metadata: dict | None = None) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.metadata = metadata or {}

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, type={self.type!r}, default={self.default!r}, default_factory={self.default_factory!r})"


def field(*, default: Any = MISSING, default_factory: Any = MISSING, metadata: dict | None = None) -> Any:
    """A field's default or factory and metadata, as `dataclasses.field` takes them."""
    return Field(default, default_factory, metadata)


def dataclass(cls: type | None = None, /, *, frozen: bool = False, eq: bool = True, repr: bool = True) -> Any:
    """Make CLS a record (as `@dataclass` or `@dataclass(frozen=True, eq=False)`)."""

    def wrap(cls: type) -> type:
        return _make(cls, frozen, eq, repr)

    return wrap if cls is None else wrap(cls)


def fields(record: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    try:
        return record.__record_fields__
    except AttributeError:
        raise TypeError(f"{record!r} is not a record") from None


def replace(record: Any, /, **changes: Any) -> Any:
    """A new record of the same class with CHANGES (field names) and the other fields copied."""
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    for name in changes:
        if name not in values:
            raise TypeError(f"{type(record).__name__}.replace() got an unexpected keyword argument {name!r}")
    values.update(changes)
    return type(record)(**values)


def is_record(obj: Any) -> bool:
    return hasattr(type(obj) if not isinstance(obj, type) else obj, "__record_fields__")


def _make(cls: type, frozen: bool, eq: bool, want_repr: bool) -> type:
    own = cls.__dict__
    specs = []
    seen_default = False
    for name, kind in own.get("__annotations__", {}).items():
        given = own.get(name, MISSING)
        spec = given if isinstance(given, Field) else Field(default=given)
        spec.name, spec.type = name, kind
        if isinstance(spec.default, (list, dict, set)):
            raise ValueError(f"mutable default {type(spec.default).__name__} for field {name} is not allowed: use default_factory")
        has_default = spec.default is not MISSING or spec.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {name!r} follows default argument")
        seen_default = seen_default or has_default
        if isinstance(given, Field):
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        specs.append(spec)
    cls.__record_fields__ = tuple(specs)
    cls.__match_args__ = tuple(spec.name for spec in specs)
    cls.__init__ = _init
    if want_repr and "__repr__" not in own:
        cls.__repr__ = _repr
    if eq and "__eq__" not in own:
        cls.__eq__ = _eq
        if "__hash__" not in own or own["__hash__"] is None:
            cls.__hash__ = _hash if frozen else None
    if frozen:
        cls.__setattr__ = _refuse_set
        cls.__delattr__ = _refuse_delete
    return cls


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    specs = self.__record_fields__
    if len(args) > len(specs):
        raise TypeError(f"{type(self).__name__}() takes {len(specs)} positional arguments but {len(args)} were given")
    put = object.__setattr__
    for i, spec in enumerate(specs):
        name = spec.name
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {name!r}")
            value = args[i]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif spec.default is not MISSING:
            value = spec.default
        elif spec.default_factory is not MISSING:
            value = spec.default_factory()
        else:
            raise TypeError(f"{type(self).__name__}() missing required argument: {name!r}")
        put(self, name, value)
    if kwargs:  # what is left is no field: a field's name was taken above or refused as given twice
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _values(record: Any) -> tuple:
    return tuple(getattr(record, spec.name) for spec in record.__record_fields__)


def _repr(self: Any) -> str:
    inner = ", ".join(f"{spec.name}={getattr(self, spec.name)!r}" for spec in self.__record_fields__)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse_set(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delete(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")
