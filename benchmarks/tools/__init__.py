"""One module per tool compared, each implementing `base.Tool`; `ALL` in table order."""

from __future__ import annotations

from tools.base import Tool
from tools.borg import Borg
from tools.cas import Cas
from tools.casync import Casync
from tools.restic import Restic
from tools.tar import Tar3, Tar10

ALL: tuple[type[Tool], ...] = (Tar3, Tar10, Cas, Casync, Restic, Borg)
BASELINE = Tar3

__all__ = ["ALL", "BASELINE", "Tar10", "Tool"]
