"""Event documents: what the runtime tells the world, with a stable, versioned schema.

Every event is one JSON object (``edge/core/event_schema.json``, beside this file, is its JSON Schema)::

    {"schema": "poseface.event/1", "type": "recognised", "time": "2024-05-01T12:00:00.123Z",
     "source": "camera0", "track_id": 7, "identity": "Ada", "score": 0.61, "yaw": -32.5,
     "box": [120.0, 80.5, 210.0, 190.0], "frame": "0001.jpg"}

- ``type``: ``recognised`` (a track was matched to an enrolled identity), ``unknown_face`` (a
  track was decided to be nobody enrolled), ``track_ended`` (a track left the scene; its
  identity is the one decided for it, or null).
- ``time``: ISO-8601 UTC with milliseconds and ``Z``, when the frame was captured.
- ``source``: the frame source's name (camera name, file path, stream URL without credentials).
- ``track_id``: integer >= 0, stable for the life of a track.
- ``identity``: the enrolled name (``recognised``; ``track_ended`` when decided), else null.
- ``score``: cosine similarity of the best gallery match in [-1, 1], or null (empty gallery).
- ``yaw``: the face's head yaw in degrees [-180, 180] (sign as in edge.geometry.headpose), or
  null on ``track_ended`` when not known.
- ``box``: [x1, y1, x2, y2] in the frame's pixels (the last box for ``track_ended``), or null
  on ``track_ended`` only.
- ``frame``: the file name (string) or frame index (integer >= 0) for file and folder sources;
  null for live sources.

The schema string changes (``poseface.event/2``) only when a field changes meaning or goes
away; consumers should check it. No face image is ever part of an event.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

SCHEMA = "poseface.event/1"
# The JSON Schema of these documents, for consumers; tests check every event against it.
SCHEMA_PATH = Path(__file__).with_name("event_schema.json")
EVENT_TYPES = ("recognised", "unknown_face", "track_ended")
FIELDS = ("schema", "type", "time", "source", "track_id", "identity", "score", "yaw", "box", "frame")
# Rounded on output: more digits are noise (landmark-based yaw is good to a degree or so) and
# would make otherwise equal events differ.
SCORE_DIGITS = 4
YAW_DIGITS = 1
BOX_DIGITS = 1


class EventError(ValueError):
    """An event is malformed; the message names the field and what was expected."""


def format_time(when: Union[float, datetime, None] = None) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` from epoch seconds, an aware datetime, or now."""
    if when is None:
        moment = datetime.now(timezone.utc)
    elif isinstance(when, datetime):
        if when.tzinfo is None:
            raise EventError("time: expected a timezone-aware datetime (naive times are ambiguous)")
        moment = when.astimezone(timezone.utc)
    elif isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when):
        moment = datetime.fromtimestamp(float(when), tz=timezone.utc)
    else:
        raise EventError(f"time: expected epoch seconds or a datetime, got {when!r}")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: Any, name: str, low: float, high: float, nullable: bool) -> float | None:
    if value is None:
        if nullable:
            return None
        raise EventError(f"{name}: expected a number in [{low:g}, {high:g}], got null")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EventError(f"{name}: expected a number in [{low:g}, {high:g}], got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(number) and low <= number <= high):
        raise EventError(f"{name}: expected a number in [{low:g}, {high:g}], got {value!r}")
    return number


@dataclass(frozen=True)
class Event:
    """One event; build it with :func:`recognised`, :func:`unknown_face` or :func:`track_ended`.

    Validated on construction, so every Event can be serialised and matches the schema.
    """

    type: str
    time: str
    source: str
    track_id: int
    identity: str | None = None
    score: float | None = None
    yaw: float | None = None
    box: tuple | None = None
    frame: Union[str, int, None] = None

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise EventError(f"type: expected one of {', '.join(EVENT_TYPES)}, got {self.type!r}")
        if not isinstance(self.time, str) or not _is_utc_time(self.time):
            raise EventError(f"time: expected ISO-8601 UTC like 2024-05-01T12:00:00.123Z, got {self.time!r}")
        if not isinstance(self.source, str) or not self.source:
            raise EventError(f"source: expected a non-empty string, got {self.source!r}")
        track_id = _index(self.track_id)
        if track_id is None:
            raise EventError(f"track_id: expected an integer >= 0, got {self.track_id!r}")
        object.__setattr__(self, "track_id", track_id)
        ended = self.type == "track_ended"
        if self.type == "recognised" and not (isinstance(self.identity, str) and self.identity):
            raise EventError(f"identity: expected the recognised name, got {self.identity!r}")
        if self.type == "unknown_face" and self.identity is not None:
            raise EventError(f"identity: expected null for unknown_face, got {self.identity!r}")
        if self.identity is not None and not (isinstance(self.identity, str) and self.identity):
            raise EventError(f"identity: expected a non-empty string or null, got {self.identity!r}")
        score = _number(self.score, "score", -1.0, 1.0, nullable=self.type != "recognised")
        yaw = _number(self.yaw, "yaw", -180.0, 180.0, nullable=ended)
        object.__setattr__(self, "score", None if score is None else round(score, SCORE_DIGITS))
        object.__setattr__(self, "yaw", None if yaw is None else round(yaw, YAW_DIGITS))
        object.__setattr__(self, "box", _box(self.box, nullable=ended))
        frame = self.frame
        if frame is not None and not (isinstance(frame, str) and frame):
            frame = _index(frame)
            if frame is None:
                raise EventError(f"frame: expected a file name, a frame index >= 0, or null, got {self.frame!r}")
            object.__setattr__(self, "frame", frame)

    def to_dict(self) -> dict:
        """The JSON-ready document, fields in schema order."""
        return {
            "schema": SCHEMA,
            "type": self.type,
            "time": self.time,
            "source": self.source,
            "track_id": self.track_id,
            "identity": self.identity,
            "score": self.score,
            "yaw": self.yaw,
            "box": None if self.box is None else list(self.box),
            "frame": self.frame,
        }

    def to_json(self) -> str:
        """One line of compact JSON (UTF-8 names kept as they are, no newline inside)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _index(value: Any) -> int | None:
    """``value`` as an int >= 0 (numpy integers included, bools and floats not), else None."""
    if isinstance(value, bool):
        return None
    try:
        index = operator.index(value)
    except TypeError:
        return None
    return int(index) if index >= 0 else None


def _box(value: Any, nullable: bool) -> tuple | None:
    if value is None:
        if nullable:
            return None
        raise EventError("box: expected [x1, y1, x2, y2] in pixels, got null")
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise EventError(f"box: expected [x1, y1, x2, y2] in pixels, got {value!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise EventError(f"box: expected 4 finite numbers [x1, y1, x2, y2], got {value!r}")
    if values[2] < values[0] or values[3] < values[1]:
        raise EventError(f"box: expected x2 >= x1 and y2 >= y1, got {values}")
    return tuple(round(v, BOX_DIGITS) for v in values)


# The same pattern as event_schema.json's "time"; then the calendar is checked (no 2024-02-30).
_TIME_RE = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,6})?Z$")


def _is_utc_time(text: str) -> bool:
    found = _TIME_RE.match(text)
    if not found:
        return False
    try:
        datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def recognised(
    *,
    source: str,
    track_id: int,
    identity: str,
    score: float,
    yaw: float,
    box: Sequence[float],
    frame: Union[str, int, None] = None,
    time: Union[float, datetime, None] = None,
) -> Event:
    return Event("recognised", format_time(time), source, track_id, identity, score, yaw, box, frame)


def unknown_face(
    *,
    source: str,
    track_id: int,
    score: float | None,
    yaw: float,
    box: Sequence[float],
    frame: Union[str, int, None] = None,
    time: Union[float, datetime, None] = None,
) -> Event:
    return Event("unknown_face", format_time(time), source, track_id, None, score, yaw, box, frame)


def track_ended(
    *,
    source: str,
    track_id: int,
    identity: str | None = None,
    score: float | None = None,
    yaw: float | None = None,
    box: Sequence[float] | None = None,
    frame: Union[str, int, None] = None,
    time: Union[float, datetime, None] = None,
) -> Event:
    return Event("track_ended", format_time(time), source, track_id, identity, score, yaw, box, frame)


def event_from_dict(data: Any) -> Event:
    """Parse a received event document (the inverse of :meth:`Event.to_dict`)."""
    if not isinstance(data, Mapping):
        raise EventError(f"event: expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise EventError(f"schema: expected {SCHEMA!r}, got {data.get('schema')!r}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise EventError(f"event: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise EventError(f"event: missing field {missing[0]!r}")
    return Event(*(data[name] for name in FIELDS[1:]))


def event_from_json(line: str) -> Event:
    try:
        data = json.loads(line)
    except ValueError as err:
        raise EventError(f"event: not valid JSON ({err})") from None
    return event_from_dict(data)
