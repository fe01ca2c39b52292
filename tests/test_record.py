"""mailfilter.record: the records the config, the model and the policy are made of behave as frozen dataclasses do."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest

from mailfilter.record import MISSING, FrozenInstanceError, dataclass, field, fields, replace


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple = field(default=(), metadata={"doc": "labels"})
    seen: list = field(default_factory=list)


@dataclass
class Tally:
    count: int = 0


@dataclass(frozen=True, eq=False)
class Handle:
    name: str


@dataclass(frozen=True)
class Checked:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low above high")


def test_positional_keyword_defaults_and_factories():
    p = Point(1, tags=("a",))
    assert (p.x, p.y, p.tags, p.seen) == (1, 0, ("a",), [])
    assert Point(1).seen is not Point(1).seen  # a factory runs per instance
    assert Point.y == 0 and not hasattr(Point, "seen")  # as dataclasses: a default stays a class attribute, a factory does not


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (Point, "missing required argument: 'x'"),
        (lambda: Point(1, 2, (), [], 5), "takes 4 positional arguments but 5 were given"),
        (lambda: Point(1, x=2), "multiple values for argument 'x'"),
        (lambda: Point(1, z=2), "unexpected keyword argument 'z'"),
    ],
)
def test_wrong_arguments_are_type_errors(call, text):
    with pytest.raises(TypeError, match=text):
        call()


def test_frozen_refuses_assignment_and_deletion():
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.x
    t = Tally()
    t.count += 1
    assert t.count == 1


def test_equality_and_hash():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert hash(Checked(1, 2)) == hash(Checked(1, 2)) and len({Checked(1, 2), Checked(1, 2), Checked(1, 3)}) == 2
    assert Point(1) != (1, 0, (), [])  # another class never compares equal
    assert Tally.__hash__ is None  # mutable and comparable: unhashable, as dataclasses makes it
    a, b = Handle("x"), Handle("x")
    assert a != b and a == a and hash(a) != hash(b)  # eq=False: identity


def test_repr_fields_replace():
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=(), seen=[])"
    assert [f.name for f in fields(Point)] == ["x", "y", "tags", "seen"] == [f.name for f in fields(Point(1))]
    assert fields(Point)[2].metadata == {"doc": "labels"} and fields(Point)[0].default is MISSING
    assert fields(Point)[0].type == "int"  # annotations stay strings under `from __future__ import annotations`
    p = Point(1, 2)
    q = replace(p, y=5)
    assert (q, p) == (Point(1, 5), Point(1, 2))
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        replace(p, z=1)
    with pytest.raises(TypeError, match="not a record"):
        fields(object())


def test_post_init_runs_after_fields_are_set():
    assert Checked(1, 2).high == 2
    with pytest.raises(ValueError, match="low above high"):
        Checked(3, 2)
    assert replace(Checked(1, 2), high=4) == Checked(1, 4)
    with pytest.raises(ValueError, match="low above high"):
        replace(Checked(1, 2), low=5)


def test_match_copy_pickle():
    match Point(3, 4):
        case Point(x, y):
            assert (x, y) == (3, 4)
    p = Point(1, 2, ("t",))
    assert copy.copy(p) == p and copy.deepcopy(p) == p and pickle.loads(pickle.dumps(p)) == p  # noqa: S301 - our own bytes


def test_mutable_default_and_order_are_refused_when_the_class_is_made():
    with pytest.raises(ValueError, match="mutable default"):

        @dataclass
        class Bad:
            items: list = []  # noqa: RUF012

    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):

        @dataclass
        class Order:
            a: int = 0
            b: int


def test_the_pipe_fallback_imports_no_dataclasses():
    """What this module is for: a `mailfilter pipe` process without a worker loads the config, the model and the
    policy without importing `dataclasses` (and the `inspect` it pulls in)."""
    code = (
        "import sys, mailfilter.doors.pipe, mailfilter.pipeline, mailfilter.policy, mailfilter.config;"
        "print(sorted(m for m in ('dataclasses', 'inspect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
