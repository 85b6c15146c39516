"""Consumer groups: the group coordinator and committed offsets (`__consumer_offsets`)."""

from .coordinator import GroupCoordinator
from .offsets import OFFSETS_TOPIC

__all__ = ["OFFSETS_TOPIC", "GroupCoordinator"]
