"""Consumer groups: membership (membership.py), committed offsets (offset_manager.py on top of the
`__consumer_offsets` store in offsets.py), and the `GroupCoordinator` that composes the two."""

from .coordinator import GroupCoordinator
from .offsets import OFFSETS_TOPIC

__all__ = ["OFFSETS_TOPIC", "GroupCoordinator"]
