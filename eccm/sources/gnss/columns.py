"""The GNSS source's record columns: one list that the reader, the record, the socket
and the offline tools share (no parser here: light enough for the command line)."""
from __future__ import annotations

from typing import Dict, Tuple

from eccm.core.state import Column

# The Fix attribute behind each column is FIX_ATTRS, in the same order.
COLUMNS: Tuple[Column, ...] = (
    Column("GNSS_TIME", "UTC"),
    Column("LATITUDE", "deg"),
    Column("LONGITUDE", "deg"),
    Column("ALTITUDE", "m"),
    Column("GNSS_SPEED", "m/s"),
    Column("TRACK", "deg"),
    Column("FIX_MODE"),
    Column("SATELLITES", "count"),
    Column("HDOP"),
)
FIX_ATTRS: Tuple[str, ...] = ("time", "lat", "lon", "alt", "speed", "track", "mode", "sats",
                              "hdop")
NAMES: Tuple[str, ...] = tuple(c.name for c in COLUMNS)
# The source's name (the readings' origin, its link).
SOURCE = "gnss"
# What the position's fields mean to a map or a tracker (latitude...), by column name.
POSITION: Dict[str, str] = {"latitude": "LATITUDE", "longitude": "LONGITUDE",
                            "altitude": "ALTITUDE", "speed": "GNSS_SPEED",
                            "course": "TRACK", "gnss_time": "GNSS_TIME"}
assert set(POSITION.values()) <= set(NAMES)
