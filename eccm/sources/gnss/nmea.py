"""NMEA 0183 bytes -> sentences -> one fix per receiver epoch. Pure: no I/O, no threads.

Framing follows what gpsd tolerates on real receivers: bytes outside a `$...` sentence
(binary UBX/SiRF messages, noise) are skipped and counted, though not the CR/LF line
end after a sentence, a `$` inside a sentence starts a new one (the torn one is dropped),
a sentence longer than the line cap is dropped so a stream without line ends cannot grow
memory, and a sentence whose checksum is wrong is dropped and counted. pynmea2 splits and
identifies the sentences; positions and times are converted here, strictly, so an empty
or malformed field never becomes a 0,0 position, and a value no receiver in a car can
truly report (speed 1e9 kn, track 999, -5 satellites, year 2199...) is left empty and
counted as out of range.

An epoch is the set of sentences that share one time of day (GGA, RMC, GNS, GLL, ZDA);
sentences without a time (GSA, VTG) belong to the epoch being read, as in gpsd. A position
or date sentence whose time is missing or unreadable belongs to no epoch: its second is
unknown, and giving it the time of another would pair one second's time with another
second's data. Like gpsd, a fix never merges sentences of different times: a receiver
whose burst carries GGA/GLL of second T and RMC/ZDA of T+1 gives T+1 its RMC now and its
GGA with the next burst. Unlike gpsd (which then reports T+1, T, T+2, T+1..., each second
twice, half its fields in each), a sentence a little older than the epoch being read
opens a second epoch alongside it; from then on (the receiver splits its seconds) two
epochs stay open, each assembled whole, and the older is emitted first when a third time
arrives. Fixes come out in time order: a sentence of a time no later than the latest fix
emitted is dropped and counted as stale (a jump back of more than STALE_WINDOW is the
receiver's clock being reset, and followed). A fix is emitted when a sentence with
another time of day arrives, by finish(), and -- so that a 1 Hz receiver's position is
not a whole second old when it is recorded -- as soon as the epoch is known to be
complete: like gpsd, the parser learns the sentence that ends each cycle (the same last
sentence, counted by its occurrence, two cycles running) and emits the fix on it; a
reader may also call quiet() when the line falls silent after a burst, which completes
the epoch being read only if that burst began it (a burst that also held another
second's sentences has more of this epoch to come). A sentence that still arrives for
an emitted epoch is dropped and counted as late (and the learnt end forgotten), so an
epoch is never emitted twice.

A fix's date is that of its own second: from its own RMC/ZDA, else carried from the
latest dated fix to the nearest day that fits its time of day (so 00:00:00 after
23:59:59 is the next day, and 23:59:59 read after 00:00:00 is the day before).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Dict, List, Optional, Tuple

import pynmea2

from eccm.sources.gnss.columns import COLUMNS, FIX_ATTRS

LINE_CAP = 1024
KNOTS = 0.514444  # m/s per knot

# What a receiver in a car can truly report; a value outside is a corrupt or hostile field,
# left empty and counted (Counters.out_of_range).
SPEED_MAX_KNOTS = 1000.0   # 514.4 m/s: the export (COCOM) limit above which receivers
                           # stop giving fixes; rejects 1e9 kn, generous for any car
SPEED_MAX_KMH = 1852.0     # the same, in km/h
TRACK_MAX = 360.0          # degrees true, 0..360 (some receivers print 360.0 for north)
ALT_MIN = -1000.0          # m MSL: the lowest road, by the Dead Sea, is at -430 m
ALT_MAX = 18000.0          # m: the COCOM altitude limit; no road is above 5800 m
SATS_MAX = 200             # satellites used: more than all navigation + SBAS ones in orbit
HDOP_MAX = 99.99           # the widest the field is printed
HDOP_UNKNOWN = 99.0        # 99.0..99.99 (and 0.0) are receivers' "unknown": empty, no error
DATE_MIN = date(1980, 1, 6)    # the GPS epoch: no GNSS date is earlier
DATE_MAX = date(2099, 12, 31)  # RMC's two-digit year cannot go further; a later ZDA year
                               # (2199) is corrupt. This wide window is for old captures
                               # (eccm gnss-parse); the live reader passes a narrower one.
STALE_WINDOW = 5.0  # s: a time this little before the latest fix emitted is a split
                    # burst's straggler (dropped); further back, the receiver's clock
                    # jumped, and its time is taken as it is


def _mps(speed: float) -> float:
    """A converted speed in m/s to the micrometre per second: no float noise."""
    return round(speed, 6)

# Fix modes, as gpsd numbers them.
MODE_NONE, MODE_2D, MODE_3D = 1, 2, 3

_GGA_QUALITY = {1: "GPS", 2: "DGPS", 3: "PPS", 4: "RTK", 5: "FloatRTK", 6: "DR",
                7: "Manual", 8: "Simulated"}
_MODE_INDICATOR = {"A": "GPS", "D": "DGPS", "P": "PPS", "R": "RTK", "F": "FloatRTK",
                   "E": "DR", "M": "Manual", "S": "Simulated"}
_END = re.compile(rb"[\r\n$]")
_LINE_ENDS = re.compile(rb"[\r\n]*")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class Fix:
    """One receiver epoch. lat/lon are None without a valid position (mode 1)."""
    time_of_day: time
    date: Optional[date] = None
    lat: Optional[float] = None
    lon: Optional[float] = None
    alt: Optional[float] = None      # m above mean sea level
    speed: Optional[float] = None    # m/s
    track: Optional[float] = None    # degrees true
    mode: int = MODE_NONE
    quality: Optional[str] = None
    sats: Optional[int] = None
    hdop: Optional[float] = None
    mono: Optional[float] = None     # arrival (monotonic), set by the reader

    @property
    def utc(self) -> Optional[datetime]:
        if self.date is None:
            return None
        return datetime.combine(self.date, self.time_of_day).replace(tzinfo=timezone.utc)

    @property
    def time(self) -> str:
        """ISO 8601 UTC with ms and Z; the time of day alone without a date."""
        t = self.time_of_day
        clock = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}Z"
        return f"{self.date.isoformat()}T{clock}" if self.date else clock

    def as_dict(self) -> Dict[str, object]:
        return {"time": self.time, "lat": self.lat, "lon": self.lon, "alt": self.alt,
                "speed": self.speed, "track": self.track, "mode": self.mode,
                "quality": self.quality, "sats": self.sats, "hdop": self.hdop}

    def readings(self) -> Dict[str, Tuple[object, str]]:
        """The fix as the GNSS source's values: column name -> (value, unit)."""
        return {col.name: (getattr(self, attr), col.unit)
                for col, attr in zip(COLUMNS, FIX_ATTRS)}


@dataclass
class Counters:
    sentences: int = 0        # well-formed sentences read
    fixes: int = 0
    bad_checksum: int = 0
    garbage_bytes: int = 0    # bytes outside any sentence but line ends (binary, noise)
    torn: int = 0             # sentences cut by a '$', a non-text byte or the line cap
    unparsed: int = 0         # framed and checked, but not a sentence pynmea2 can read
    late: int = 0             # sentences of an epoch already emitted early (dropped)
    out_of_range: int = 0     # values no receiver can truly report (left empty)
    stale: int = 0            # sentences (or fixes) of a time no later than the latest
                              # fix emitted: dropped, so published times never go back


def checksum_ok(body: str, given: str) -> bool:
    value = 0
    for ch in body:
        value ^= ord(ch)
    return f"{value:02X}" == given.upper()


def degrees(value: str, hemisphere: str, axis: str) -> Optional[float]:
    """'4404.14063','N','NS' -> 44.0690105; None for anything malformed (never 0,0).

    axis is "NS" (latitude, |lat| <= 90) or "EW" (longitude, |lon| <= 180): the letter
    must be one of the field's own, or a latitude field ending ',E' would be read as a
    longitude and pass a 180 limit."""
    if not value or len(hemisphere) != 1 or hemisphere not in axis:
        return None
    try:
        raw = float(value)
    except ValueError:
        return None
    whole = int(raw // 100)
    minutes = raw - whole * 100
    limit = 90 if axis == "NS" else 180
    if raw < 0 or minutes >= 60 or whole > limit:
        return None
    result = whole + minutes / 60.0
    if result > limit:
        return None
    # 9 decimals (0.1 mm) keep all an NMEA field carries and drop binary float noise
    # (44.06889783333333) from what records, JSON and the socket show.
    result = round(result, 9)
    return -result if hemisphere in ("S", "W") else result


def _float(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _int(value: Optional[str]) -> Optional[int]:
    number = _float(value)
    return int(number) if number is not None else None


def _float_any(value: Optional[str]) -> Optional[float]:
    """A field as a float, NaN and infinities included (for range checks to refuse)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


# An epoch's key: hour, minute, second (60 in a leap second), microsecond.
_Key = Tuple[int, int, int, int]


def _clock(value: str) -> Optional[_Key]:
    """'171926.00' -> (17, 19, 26, 0); None if malformed or impossible."""
    match = re.fullmatch(r"(\d\d)(\d\d)(\d\d)(?:\.(\d{1,6}))?", value)
    if not match:
        return None
    hour, minute, second = int(match[1]), int(match[2]), int(match[3])
    if hour > 23 or minute > 59 or second > 60:
        return None
    return hour, minute, second, int((match[4] or "0").ljust(6, "0"))


def _calendar(day: str, month: str, year: str) -> Optional[date]:
    """A date from its fields, the RMC's two-digit year as gpsd reads it (80..99 -> 19xx,
    else 20xx); None if there is no such day."""
    if not (day.isdigit() and month.isdigit() and year.isdigit()):
        return None
    y = int(year)
    if len(year) <= 2:
        y += 1900 if y >= 80 else 2000
    try:
        return date(y, int(month), int(day))
    except ValueError:
        return None


def _key(tod: time) -> _Key:
    return tod.hour, tod.minute, tod.second, tod.microsecond


def _ahead(a: _Key, b: _Key) -> float:
    """Seconds from time of day a to b, across midnight either way (-12 h .. 12 h)."""
    ta = a[0] * 3600 + a[1] * 60 + a[2] + a[3] / 1e6
    tb = b[0] * 3600 + b[1] * 60 + b[2] + b[3] / 1e6
    return (tb - ta + 43200.0) % 86400.0 - 43200.0


def _nearest_day(ref: datetime, tod: time) -> date:
    """The day that puts tod nearest to ref: across midnight the date rolls either way."""
    days = (ref.date() + timedelta(days=n) for n in (-1, 0, 1))
    return min(days, key=lambda d: abs(datetime.combine(d, tod) - ref))


class Framer:
    """Bytes -> candidate sentence strings ('$...' without the line end)."""

    def __init__(self, counters: Counters, cap: int = LINE_CAP):
        self.counters = counters
        self.cap = cap
        self._buf = b""  # empty, or a partial sentence starting with '$' (<= cap bytes)
        # True while all bytes since the last sentence (or the stream start) are CR/LF:
        # more of them are still its line end, not garbage, even in the next feed.
        self._line_end = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _skip(self, buf: bytes, pos: int, stop: int) -> None:
        """Count buf[pos:stop], outside any sentence, as garbage but for a line end."""
        if self._line_end:
            pos = _LINE_ENDS.match(buf, pos, stop).end()  # type: ignore[union-attr]
        if pos < stop:
            self.counters.garbage_bytes += stop - pos
            self._line_end = False

    def feed(self, data: bytes) -> List[str]:
        buf = self._buf + data
        out: List[str] = []
        pos = 0
        while pos < len(buf):
            start = buf.find(b"$", pos)
            if start < 0:
                self._skip(buf, pos, len(buf))
                pos = len(buf)
                break
            self._skip(buf, pos, start)
            end_match = _END.search(buf, start + 1)
            if end_match is None:
                if len(buf) - start > self.cap:
                    self.counters.torn += 1
                    self._line_end = False  # the rest of that line is yet to come
                    pos = len(buf)
                else:
                    pos = start
                break
            end = end_match.start()
            if end - start > self.cap:
                self.counters.torn += 1
            elif buf[end:end + 1] == b"$":
                self.counters.torn += 1  # a new sentence began before this one ended
            else:
                out.append(buf[start:end].decode("latin-1"))
            self._line_end = True
            pos = end if buf[end:end + 1] == b"$" else end + 1
        self._buf = buf[pos:]
        return out


@dataclass
class _Epoch:
    key: _Key
    mono: Optional[float] = None  # arrival of its first sentence
    fields: Dict[str, object] = field(default_factory=dict)
    valid: Optional[bool] = None  # None: no position sentence yet
    last: Optional[Tuple[str, int]] = None  # (address, occurrence) of the latest sentence
    seen: Dict[str, int] = field(default_factory=dict)

    def add(self, address: str) -> Tuple[str, int]:
        self.seen[address] = self.seen.get(address, 0) + 1
        self.last = (address, self.seen[address])
        return self.last

    @property
    def tod(self) -> Optional[time]:
        """Its time of day; None for a leap second (23:59:60), which has none."""
        hour, minute, second, micro = self.key
        return time(hour, minute, second, micro) if second < 60 else None


class NmeaParser:
    """Stateful parser of one receiver stream: feed(bytes) -> finished fixes."""

    def __init__(self, cap: int = LINE_CAP, counters: Optional[Counters] = None,
                 dates: Tuple[date, date] = (DATE_MIN, DATE_MAX)):
        """dates: the first and last date taken; another is left out and counted (a
        running ECCM knows a date before its release cannot be now)."""
        self.counters = counters if counters is not None else Counters()
        self._dates = dates
        self._framer = Framer(self.counters, cap)
        # Epochs being read: at most two, the seconds a split burst interleaves.
        self._open: Dict[_Key, _Epoch] = {}
        self._cur: Optional[_Key] = None  # the one untimed sentences (GSA, VTG) join
        self._dated: Optional[datetime] = None  # UTC of the latest fix with a date
        self._done: List[Fix] = []
        self._ender: Optional[Tuple[str, int]] = None      # learnt end of a cycle
        self._last_end: Optional[Tuple[str, int]] = None   # how the previous cycle ended
        self._emitted: Optional[time] = None  # epoch emitted early; its stragglers are late
        self._by_quiet = False
        self._quiet_trusted = True  # until a pause turns out to be inside a burst
        self._mono: Optional[float] = None  # arrival of the bytes being read
        self._paused = False  # quiet() was called; the next sentence starts a burst
        self._burst_first: Optional[_Key] = None  # time of the burst's first timed sentence
        self._last_out: Optional[time] = None  # time of day of the latest fix emitted
        self._stale_sentence = False  # the sentence being read was dropped as stale
        self._split = False  # a burst began with the next second's sentences

    @property
    def buffered(self) -> int:
        """Bytes held between feeds (never more than the line cap)."""
        return self._framer.buffered

    def feed(self, data: bytes, mono: Optional[float] = None) -> List[Fix]:
        """Bytes that arrived at monotonic time `mono` (the reader's clock; fixes carry the
        arrival of their epoch's first sentence)."""
        self._mono = mono
        for text in self._framer.feed(data):
            self._sentence(text)
        fixes, self._done = self._done, []
        return fixes

    def finish(self) -> List[Fix]:
        """Emit the epochs being read (end of a capture)."""
        self._emit_all()
        fixes, self._done = self._done, []
        return fixes

    @property
    def cycle_end_known(self) -> bool:
        """Whether fixes are emitted on the learnt last sentence of each cycle."""
        return self._ender is not None

    def quiet(self) -> List[Fix]:
        """The line fell silent after a burst: the epoch being read is complete if the
        burst began with it. Once a sentence of the epoch arrived after such a pause,
        pauses are no longer trusted. Calling it again in the same pause does nothing more."""
        self._paused = True
        if self._epoch is not None and self._quiet_trusted \
                and self._epoch.key == self._burst_first:
            self._learn(self._epoch.last)
            self._emit_early()
            self._by_quiet = True
        fixes, self._done = self._done, []
        return fixes

    def _sentence(self, text: str) -> None:
        if not _PRINTABLE.fullmatch(text):
            self.counters.torn += 1  # binary bytes inside: not a sentence
            return
        body, star, given = text[1:].partition("*")
        if star:
            given = given.strip()
            if len(given) != 2 or not checksum_ok(body, given):
                self.counters.bad_checksum += 1
                return
        try:
            msg = pynmea2.parse(text, check=False)
        except (pynmea2.ParseError, ValueError, TypeError, AttributeError, IndexError):
            self.counters.unparsed += 1
            return
        self.counters.sentences += 1
        handler = getattr(self, f"_on_{getattr(msg, 'sentence_type', '').lower()}", None)
        if handler is None:
            return  # GSV, TXT, proprietary: no fix data, so no part in the cycle either
        if self._paused:  # the first sentence after a pause begins a new burst
            self._paused = False
            self._burst_first = None
        try:
            handler(msg)
        except (ValueError, TypeError, AttributeError, IndexError):
            self.counters.unparsed += 1
        self._after(body.split(",", 1)[0])

    @property
    def _epoch(self) -> Optional[_Epoch]:
        """The epoch being read: that of the latest timed sentence, unless emitted."""
        return self._open.get(self._cur) if self._cur is not None else None

    def _at(self, value: str) -> bool:
        """A sentence of the time of day `value`: make its epoch current. False if the
        sentence belongs to no epoch being read (no usable time, a straggler of an epoch
        emitted early, or of a time no later than a fix already emitted).

        A time a little before the epoch open is read alongside it (a burst with RMC of
        T+1 before GGA of T): both stay open, so each second is assembled whole, and the
        older is emitted first, when a newer time arrives (or the cycle ends, quiet(),
        finish()). Any other new time finishes the epochs open, as gpsd does."""
        key = _clock(value)
        if key is None:
            if value:
                self.counters.out_of_range += 1
            return False
        if self._burst_first is None:
            self._burst_first = key
        if key in self._open:
            self._cur = key
            return True
        if self._epoch is None and self._emitted is not None and key == _key(self._emitted):
            return False  # a straggler of the epoch emitted early: _after() counts it
        if self._behind(key):
            self.counters.stale += 1
            self._cur = None  # its GSA/VTG must not join another second either
            self._stale_sentence = True
            return False
        epochs = self._in_order()
        if len(epochs) == 2 and -STALE_WINDOW < _ahead(epochs[0].key, key) < 0:
            self.counters.stale += 1  # before both seconds being read: too late
            self._cur = None
            self._stale_sentence = True
            return False
        if self._epoch is not None:
            self._learn(self._epoch.last)
        if len(epochs) == 1 and 0 < _ahead(key, epochs[0].key) < STALE_WINDOW:
            self._split = True  # a second just before the one being read: read both
        elif len(epochs) == 1 and self._split and \
                0 < _ahead(epochs[0].key, key) < STALE_WINDOW:
            pass  # on a receiver that splits seconds, that one's GGA may still come
        elif len(epochs) == 2 and 0 < _ahead(epochs[0].key, key) and \
                _ahead(epochs[1].key, key) < STALE_WINDOW:
            self._finish_epoch(epochs[0])  # a later second than the older one: it is whole
        else:
            self._emit_all()  # kept even if the rest of this sentence is bad
        self._open[key] = _Epoch(key, mono=self._mono)
        self._cur = key
        self._emitted = None
        return True

    def _after(self, address: str) -> None:
        """Bookkeeping once a sentence is read: cycle-end learning and early emission."""
        if self._stale_sentence:
            self._stale_sentence = False
            return
        if self._epoch is None:
            if self._emitted is not None:  # the epoch was emitted too early
                self.counters.late += 1
                self._ender = self._last_end = None
                self._quiet_trusted = self._quiet_trusted and not self._by_quiet
            return
        if self._epoch.add(address) == self._ender:
            self._emit_early()
            self._by_quiet = False

    def _learn(self, end: Optional[Tuple[str, int]]) -> None:
        """A cycle ended with `end`: the same end twice running is the cycle's end."""
        self._ender = end if end is not None and end == self._last_end else None
        self._last_end = end

    def _emit_early(self) -> None:
        """The epoch being read is complete: emit it, after any older one still open."""
        epoch = self._epoch
        assert epoch is not None
        for other in list(self._open.values()):
            if _ahead(epoch.key, other.key) < 0:
                self._finish_epoch(other)
        self._emitted = epoch.tod
        self._finish_epoch(epoch)

    def _in_order(self) -> List[_Epoch]:
        """The open epochs, oldest first."""
        epochs = list(self._open.values())
        return sorted(epochs, key=lambda e: _ahead(epochs[0].key, e.key))

    def _emit_all(self) -> None:
        for epoch in self._in_order():
            self._finish_epoch(epoch)

    def _finish_epoch(self, epoch: _Epoch) -> None:
        """An open epoch becomes a fix for the next feed() to return."""
        done = self._close_epoch(epoch)
        if done is not None:
            self._done.append(done)

    def _close_epoch(self, epoch: _Epoch) -> Optional[Fix]:
        del self._open[epoch.key]
        if self._cur == epoch.key:
            self._cur = None
        tod = epoch.tod
        if tod is None:
            return None  # a leap second: no time of day to give it, and not second 59's
        if self._stale(tod):
            self.counters.stale += 1
            return None
        self._last_out = tod
        f = epoch.fields
        day: Optional[date] = f.get("date")  # type: ignore[assignment]
        ref = self._dated
        for other in self._open.values():  # a later second read alongside, dated
            if other.fields.get("date") is not None and other.tod is not None:
                ref = datetime.combine(other.fields["date"], other.tod)  # type: ignore
        if day is None and ref is not None:
            day = _nearest_day(ref, tod)
        if day is not None:
            self._dated = datetime.combine(day, tod)
        valid = bool(epoch.valid) and f.get("lat") is not None and f.get("lon") is not None
        mode = f.get("gsa_mode")
        if not valid:
            mode = MODE_NONE
        elif mode not in (MODE_2D, MODE_3D):
            mode = MODE_3D if f.get("alt") is not None else MODE_2D

        def held(name: str) -> object:  # without a position, nothing measured holds
            return f.get(name) if valid else None
        self.counters.fixes += 1
        return Fix(
            time_of_day=tod, date=day, lat=held("lat"), lon=held("lon"),  # type: ignore
            alt=held("alt"), speed=held("speed"), track=held("track"),  # type: ignore
            mode=mode, quality=held("quality"), sats=held("sats"),  # type: ignore
            hdop=held("hdop"), mono=epoch.mono)  # type: ignore[arg-type]

    def _behind(self, key: _Key) -> bool:
        """Whether a sentence of time `key` comes after its second was emitted."""
        return key[2] < 60 and self._stale(time(*key))

    def _stale(self, tod: time) -> bool:
        """Whether a fix of `tod` is no later than the last emitted one (across midnight
        too): published times must not go back, nor repeat."""
        if self._last_out is None:
            return False
        return 0 <= _ahead(_key(tod), _key(self._last_out)) < STALE_WINDOW

    def _set(self, **values: object) -> None:
        if self._epoch is None:
            return
        for key, value in values.items():
            if value is not None:
                self._epoch.fields[key] = value

    def _number(self, value: Optional[str], low: float, high: float) -> Optional[float]:
        """A numeric field within [low, high]; None if empty or unreadable, and None but
        counted if out of range (NaN and infinities are)."""
        number = _float_any(value)
        if number is None or low <= number <= high:
            return number
        self.counters.out_of_range += 1
        return None

    def _speed(self, knots: Optional[str] = None, kmh: Optional[str] = None) -> Optional[float]:
        """m/s from km/h (VTG's finer field) if it is a number, else from knots."""
        if _float_any(kmh) is not None:
            value = self._number(kmh, 0.0, SPEED_MAX_KMH)
            return None if value is None else _mps(value / 3.6)
        value = self._number(knots, 0.0, SPEED_MAX_KNOTS)
        return None if value is None else _mps(value * KNOTS)

    def _track(self, value: Optional[str]) -> Optional[float]:
        return self._number(value, 0.0, TRACK_MAX)

    def _alt(self, value: Optional[str]) -> Optional[float]:
        return self._number(value, ALT_MIN, ALT_MAX)

    def _sats(self, value: Optional[str]) -> Optional[int]:
        number = self._number(value, 0, SATS_MAX)
        if number is None:
            return None
        if number != int(number):
            self.counters.out_of_range += 1
            return None
        return int(number)

    def _hdop(self, value: Optional[str]) -> Optional[float]:
        """HDOP, or None: 0.0 and 99.x are how receivers print "unknown" (not errors)."""
        number = self._number(value, 0.0, HDOP_MAX)
        if number is None or number == 0 or number >= HDOP_UNKNOWN:
            return None
        return number

    def _day(self, day: str, month: str, year: str) -> Optional[date]:
        """A date within the parser's window; an impossible one is counted."""
        if not (day or month or year):
            return None
        value = _calendar(day, month, year)
        if value is None or not self._dates[0] <= value <= self._dates[1]:
            self.counters.out_of_range += 1
            return None
        return value

    def _coordinate(self, value: str, hemisphere: str, axis: str) -> Optional[float]:
        result = degrees(value, hemisphere, axis)
        if result is None and value and _float(value) is not None:
            self.counters.out_of_range += 1  # a number, but no latitude/longitude
        return result

    def _position(self, msg: "pynmea2.NMEASentence", valid: bool) -> None:
        """A position sentence: the latest valid one in an epoch gives lat/lon."""
        assert self._epoch is not None
        if valid:
            lat = self._coordinate(msg.lat, msg.lat_dir, "NS")
            lon = self._coordinate(msg.lon, msg.lon_dir, "EW")
            if lat is not None and lon is not None:
                self._epoch.valid = True
                self._set(lat=lat, lon=lon)
                return
        if self._epoch.valid is None:
            self._epoch.valid = False

    def _on_gga(self, msg: "pynmea2.NMEASentence") -> None:
        if not self._at(msg.data[0]):
            return
        quality = _int(msg.gps_qual) or 0
        self._position(msg, quality > 0)
        if quality > 0:
            self._set(alt=self._alt(msg.altitude), quality=_GGA_QUALITY.get(quality))
        self._set(sats=self._sats(msg.num_sats), hdop=self._hdop(msg.horizontal_dil))

    def _on_rmc(self, msg: "pynmea2.NMEASentence") -> None:
        if not self._at(msg.data[0]):
            return
        stamp = msg.data[8] if len(msg.data) > 8 else ""  # ddmmyy
        if len(stamp) == 6:
            self._set(date=self._day(stamp[0:2], stamp[2:4], stamp[4:6]))
        elif stamp:
            self.counters.out_of_range += 1  # e.g. a Telit's '2208-1'
        mode = msg.data[11] if len(msg.data) > 11 else ""
        valid = msg.status == "A" and mode != "N"
        self._position(msg, valid)
        if valid:
            self._set(speed=self._speed(knots=msg.data[6]), track=self._track(msg.data[7]),
                      quality=_MODE_INDICATOR.get(mode[:1]))

    def _on_gll(self, msg: "pynmea2.NMEASentence") -> None:
        if not self._at(msg.data[4] if len(msg.data) > 4 else ""):
            return
        status = msg.data[5] if len(msg.data) > 5 else ""
        mode = msg.data[6] if len(msg.data) > 6 else ""
        self._position(msg, status == "A" and mode != "N")

    def _on_gns(self, msg: "pynmea2.NMEASentence") -> None:
        if not self._at(msg.data[0]):
            return
        modes = (msg.data[5] if len(msg.data) > 5 else "") or "N"
        best = next((m for m in modes if m not in "N"), None)
        self._position(msg, best is not None)
        if best is not None:
            self._set(alt=self._alt(msg.data[8] if len(msg.data) > 8 else ""),
                      quality=_MODE_INDICATOR.get(best))
        self._set(sats=self._sats(msg.data[6] if len(msg.data) > 6 else ""),
                  hdop=self._hdop(msg.data[7] if len(msg.data) > 7 else ""))

    def _on_zda(self, msg: "pynmea2.NMEASentence") -> None:
        if not self._at(msg.data[0]) or len(msg.data) < 4:
            return
        self._set(date=self._day(msg.data[1], msg.data[2], msg.data[3]))

    def _on_gsa(self, msg: "pynmea2.NMEASentence") -> None:
        if self._epoch is None:
            return  # late: _after() counts it
        mode = _int(msg.data[1] if len(msg.data) > 1 else "")
        hdop = self._hdop(msg.data[15]) if len(msg.data) > 15 else None
        self._set(gsa_mode=mode if mode in (1, 2, 3) else None, hdop=hdop)

    def _on_vtg(self, msg: "pynmea2.NMEASentence") -> None:
        data = msg.data
        if len(data) >= 8 and data[1] in ("T", ""):
            track, knots, kmh = data[0], data[4], data[6]
        else:  # NMEA 2.0 short form: track, magnetic, knots, km/h
            track, knots, kmh = data[0], data[2] if len(data) > 2 else "", \
                data[3] if len(data) > 3 else ""
        if self._epoch is not None and "speed" not in self._epoch.fields:
            self._set(speed=self._speed(knots=knots, kmh=kmh))
        if self._epoch is not None and "track" not in self._epoch.fields:
            self._set(track=self._track(track))


