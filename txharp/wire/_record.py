"""Immutable value objects without :mod:`dataclasses`.

The wire types used to be frozen dataclasses.  Importing ``dataclasses``
(with ``inspect``, ``ast``, ``dis``...) and generating each class's methods
cost about 20 ms at every import of :mod:`txharp.wire`, and harpd imports
it again in the child process of every call.  :class:`Record` gives the
same behaviour with ``__slots__`` and hand-written ``__init__`` methods:

* fields are read-only (assignment raises :class:`FrozenInstanceError`,
  an ``AttributeError`` as with frozen dataclasses);
* ``==`` compares the fields of two objects of exactly the same class;
  ``hash()`` hashes them (so a value holding a list is unhashable);
* ``repr()`` is ``Name(field=value, ...)``;
* ``__match_args__`` allows positional patterns;
* objects pickle and copy.

A subclass lists its fields in ``_fields`` (and in ``__slots__``), may
name fields left out of ``repr`` in ``_hidden`` and out of comparisons in
``_uncompared``, and sets them in ``__init__`` with ``_set(self, name,
value)``.  This module imports nothing.
"""

__all__ = ["FrozenInstanceError", "Record"]

#: ``object.__setattr__``: how an ``__init__`` sets a read-only field.
_set = object.__setattr__


class FrozenInstanceError(AttributeError):
    """A field of an immutable value was assigned or deleted."""


class Record:
    """Base class of immutable value objects (see the module documentation)."""

    __slots__ = ()
    _fields: tuple = ()
    _hidden: frozenset = frozenset()
    _uncompared: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.__match_args__ = cls._fields
        cls._compared = tuple(f for f in cls._fields if f not in cls._uncompared)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple:
        return tuple([getattr(self, name) for name in self._compared])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._hidden
        )
        return f"{self.__class__.__qualname__}({shown})"

    def __reduce__(self) -> tuple:
        return (self.__class__, tuple([getattr(self, name) for name in self._fields]))
