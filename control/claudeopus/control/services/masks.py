"""Update masks (AIP-134) from the wire: what a caller asked to change."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message


def update_paths(mask: FieldMask, resource: Message, updatable: Iterable[str]) -> list[str]:
    """The mask's paths; without a mask, the updatable fields the caller populated.

    An absent mask never means "everything": a client that sends only a new
    display name must not wipe a key's model list or expiry. ``*`` asks for a
    full replacement explicitly.
    """
    if mask.paths:
        return list(mask.paths)
    allowed = set(updatable)
    return [field.name for field, _ in resource.ListFields() if field.name in allowed]
