"""The resources one worker holds: a small public store every bridge uses.

``common:create_resource`` / ``delete_resource`` add and remove through it,
and a bridge that makes or drops resources itself (an optimiser that produces
a program, a reset that drops everything) uses the same methods, so nothing
reaches into another object's dicts. A store belongs to one bridge instance,
which belongs to one tenant; calls run in threads, so changes are locked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..wire.errors import AlreadyExists, InvalidArgument, NotFound

__all__ = ["ResourceStore", "Stored"]


class Stored(Protocol):
    """What the store needs of a resource (:class:`runtimes.core.Resource` has it)."""

    type_name: ClassVar[str]
    resource_id: str

    def info(self) -> dict[str, Any]: ...

    def snapshot(self) -> Any: ...


T = TypeVar("T", bound=Stored)
R = TypeVar("R", bound=Stored)


class ResourceStore(Generic[T]):
    """Resource id -> live resource object, with creation times."""

    def __init__(self) -> None:
        self._items: dict[str, T] = {}
        self._created: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, resource: T) -> None:
        """Hold ``resource`` under its id.

        Raises:
            AlreadyExists: the id is taken (or empty).
        """
        rid = resource.resource_id
        with self._lock:
            if not rid or rid in self._items:
                raise AlreadyExists(f"resource {rid!r} already exists")
            self._items[rid] = resource
            self._created[rid] = time.time()

    def get(self, rid: str) -> T:
        """The resource ``rid``.

        Raises:
            NotFound: this worker holds no such resource.
        """
        try:
            return self._items[rid]
        except KeyError:
            raise NotFound(f"resource {rid!r} not found") from None

    def get_as(self, rid: Any, kind: type[R], role: str) -> R:
        """The resource ``rid``, which must be a ``kind``; ``role`` names it in errors ("lm", "program").

        Raises:
            InvalidArgument: ``rid`` is not a non-empty string, or names a resource of another type.
            NotFound: this worker holds no such resource.
        """
        if not isinstance(rid, str) or not rid:
            raise InvalidArgument(f"{role} must be a resource id (a non-empty string)")
        res = self._items.get(rid)
        if res is None:
            raise NotFound(f"{role} {rid!r}: no such resource in this worker")
        if not isinstance(res, kind):
            raise InvalidArgument(f"{role} {rid!r} is a {res.type_name!r} resource, not {kind.type_name!r}")
        return res

    def remove(self, rid: str) -> T | None:
        """Forget ``rid`` (its ``delete`` hook is the caller's business); the resource, or None."""
        with self._lock:
            self._created.pop(rid, None)
            return self._items.pop(rid, None)

    def __contains__(self, rid: object) -> bool:
        return rid in self._items

    def __len__(self) -> int:
        return len(self._items)

    def items(self, type_name: str = "") -> list[tuple[str, T]]:
        """A snapshot of ``(id, resource)`` pairs, oldest first, of one type when ``type_name`` is given."""
        with self._lock:
            pairs = list(self._items.items())
        return [(rid, res) for rid, res in pairs if not type_name or res.type_name == type_name]

    def __iter__(self) -> Iterator[str]:
        return iter([rid for rid, _ in self.items()])

    def counts_by_type(self) -> dict[str, int]:
        """How many resources of each type this worker holds."""
        out: dict[str, int] = {}
        for _, res in self.items():
            out[res.type_name] = out.get(res.type_name, 0) + 1
        return out

    def summary(self, rid: str) -> dict[str, Any]:
        """What ``common:list_resources`` / ``get_resource`` show of one resource.

        Raises:
            NotFound: this worker holds no such resource.
        """
        res = self.get(rid)
        return {
            "resource_id": rid,
            "type": res.type_name,
            "created_unix_ms": int(self._created.get(rid, 0) * 1000),
            "info": res.info(),
        }
