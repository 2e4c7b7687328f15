"""Readable views of personal data: what the gate may serve, field by field (pure).

Owns the shape of a view: its query (a ``LiteralString`` the gate runs with the permitted
subjects, a time range and a limit), and per field its data category, where it sits in a result
row and, for an encrypted field, which data key and which storage context open it. The concrete
views live with the data they read (``device_registry.views``); the gate
(``privacy.postgres_gate``) only runs them, so no view can skip the purpose decision or the audit.

Query contract: parameters ``subjects`` (text[]), ``since``, ``until`` (timestamptz) and
``limit``; the first result column is the subject id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, LiteralString

from crypto.envelope import FieldContext
from crypto.keys import KeyClass

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Sealed:
    """How to open an encrypted column of a row."""

    key_class: KeyClass
    owner: Callable[[Row], str]  # the data key owner (subject or binding) of this row
    context: Callable[[Row], FieldContext]
    decode: Callable[[bytes, Row], object]  # plaintext bytes -> value


@dataclass(frozen=True, slots=True)
class ViewField:
    """One field of a view."""

    name: str
    category: str
    column: int  # index in the result row
    sealed: Sealed | None = None
    render: Callable[[Row], object] | None = None  # plain fields: value from the row


@dataclass(frozen=True, slots=True)
class View:
    """A query and its fields."""

    name: str
    query: LiteralString
    fields: tuple[ViewField, ...]

    @property
    def categories(self) -> Mapping[str, str]:
        """Field name -> data category, as ``PurposeTable.decide`` takes them."""
        return {f.name: f.category for f in self.fields}
