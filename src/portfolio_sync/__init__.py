"""portfolio-sync: keep a table's image lists equal to what object storage holds."""

from __future__ import annotations

__version__ = "0.1.0"
