"""The rebuild request a projector answers, apart from the projector so the edge and the CLI
can send it without importing the process that runs projections."""

from __future__ import annotations

import msgspec

REBUILD_SUBJECT = "bus.projector.rebuild"


class RebuildRequest(msgspec.Struct):
    """Asks the instance running a projection to rebuild it (on `bus.projector.rebuild.<name>`)."""


class RebuildAnswer(msgspec.Struct):
    started: bool
    instance: str = ""
    error: str = ""
