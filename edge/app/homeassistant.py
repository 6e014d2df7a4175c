"""Home Assistant MQTT discovery for the runtime: entities per camera, kept current from events.

With ``homeassistant = true`` on an ``[[events.sinks]]`` table of type ``mqtt``, the sink tells
Home Assistant (HA) about each camera by retained discovery configs, following HA's layout
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``:

- ``sensor`` ``<camera>_last_person``: the last recognised person; the state topic carries one
  JSON object (``person``, ``score``, ``yaw``, ``track_id``, ``time``, ``frame``), the state is
  its ``person`` (a value template) and the whole object is the entity's attributes. The name
  is under ``person``, not ``name``: older HA versions drop an attribute called ``name``.
- ``binary_sensor`` ``<camera>_unknown_face``: ``ON`` while a face decided to be nobody
  enrolled is being tracked, ``OFF`` once every such track has ended.
- ``sensor`` ``<camera>_people_in_view``: how many tracked faces have been decided (recognised
  or unknown) and have not left.

``node_id`` is the sink's ``client_id`` and ``<camera>`` the frame source's label, both cut to
HA's character class ``[a-zA-Z0-9_-]``; the states live under ``poseface/<node_id>/<camera>/``
and availability under ``poseface/<node_id>/availability`` (``online`` / ``offline``, retained;
``offline`` is also the connection's last will, so a runner that dies goes unavailable).

States are published retained at QoS 0 and all of them again on every (re)connection: a state
topic only needs its latest value, and a QoS 1 message held by the client across a reconnection
would be re-sent after the newer one and overwrite it. Configs go at QoS 1.

With the option off, the same topics are cleared when the sink connects (an empty retained
message each, which is how HA removes a discovered entity; where there was none, nothing
changes), so removing the option removes the entities; ``python -m edge.run
--homeassistant-remove`` does only that.

This module is plain Python: it builds the messages; :class:`edge.app.sinks.MqttSink` sends them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field

from edge import __version__
from edge.core.events import Event

STATE_ROOT = "poseface"
ONLINE = "online"
OFFLINE = "offline"
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
# (component, object suffix, entity name); the suffix also names the state topic.
ENTITIES = (
    ("sensor", "last_person", "Last recognised person"),
    ("binary_sensor", "unknown_face", "Unknown face present"),
    ("sensor", "people_in_view", "People in view"),
)
_ID_MAX = 40


class HomeAssistantError(ValueError):
    """A Home Assistant option is wrong; the message names the field."""


@dataclass(frozen=True)
class Message:
    """One MQTT publication: an empty ``payload`` on a retained topic clears it."""

    topic: str
    payload: str
    qos: int
    retain: bool = True


def topic_id(text: str, what: str = "id") -> str:
    """``text`` cut to HA's id characters ``[a-zA-Z0-9_-]`` (other runs become one ``_``).

    Ids longer than 40 characters keep their end (where camera paths and URLs differ) and a
    short hash of the whole text, so two long labels never share an id.
    """
    if not isinstance(text, str) or not text.strip():
        raise HomeAssistantError(f"homeassistant: {what}: expected a non-empty name, got {text!r}")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")
    if not slug:
        slug = what
    if len(slug) > _ID_MAX:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        slug = slug[-(_ID_MAX - 9) :].lstrip("_-") + "_" + digest
    return slug


def check_discovery_prefix(prefix: object) -> str:
    """The prefix as given, or :class:`HomeAssistantError` naming the field."""
    if (
        not isinstance(prefix, str)
        or not prefix
        or any(c in prefix for c in "+#\0")
        or prefix.startswith("/")
        or prefix.endswith("/")
        or "//" in prefix
    ):
        raise HomeAssistantError(
            "discovery_prefix: expected a topic prefix such as 'homeassistant' (no wildcards + #, "
            f"no empty level), got {prefix!r}"
        )
    return prefix


def availability_topic(node_id: str) -> str:
    return f"{STATE_ROOT}/{node_id}/availability"


@dataclass
class _Camera:
    label: str
    id: str
    tracks: dict = field(default_factory=dict)  # track_id -> "known" | "unknown", for decided tracks still in view
    last_person: dict | None = None  # the last recognised event, as the state's JSON object
    published: dict = field(default_factory=dict)  # state topic -> payload last published


class HomeAssistant:
    """Discovery configs and entity states for the cameras one runner serves.

    ``enabled=False`` turns every camera into messages that clear its configs and states
    (idempotent: clearing a topic that holds nothing changes nothing). Thread-safe: the frame
    loop calls :meth:`update`, the MQTT client's thread calls :meth:`connect_messages`.
    """

    def __init__(
        self, node_id: str, discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX, enabled: bool = True, qos: int = 1
    ):
        self.node_id = topic_id(node_id, "client_id")
        self.discovery_prefix = check_discovery_prefix(discovery_prefix)
        self.enabled = bool(enabled)
        self.config_qos = qos
        self.availability_topic = availability_topic(self.node_id)
        self._cameras: dict[str, _Camera] = {}
        self._lock = threading.RLock()

    # -- topics and payloads ------------------------------------------------------------------
    def camera_id(self, label: str) -> str:
        return topic_id(label, "camera")

    def state_topic(self, camera_id: str, suffix: str) -> str:
        return f"{STATE_ROOT}/{self.node_id}/{camera_id}/{suffix}"

    def config_topic(self, component: str, camera_id: str, suffix: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{camera_id}_{suffix}/config"

    def topics(self, label: str) -> dict[str, list[str]]:
        """``{"config": [...], "state": [...]}``: every retained topic of one camera."""
        cid = self.camera_id(label)
        return {
            "config": [self.config_topic(component, cid, suffix) for component, suffix, _ in ENTITIES],
            "state": [self.state_topic(cid, suffix) for _, suffix, _ in ENTITIES],
        }

    def discovery_config(self, label: str, component: str, suffix: str, name: str) -> dict:
        """The discovery payload of one entity (HA's documented keys, unabbreviated)."""
        cid = self.camera_id(label)
        state = self.state_topic(cid, suffix)
        config: dict = {
            "name": name,
            "unique_id": f"poseface_{self.node_id}_{cid}_{suffix}",
            "state_topic": state,
            "availability_topic": self.availability_topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": {
                "identifiers": [f"poseface_{self.node_id}_{cid}"],
                "name": f"PoseFace {label}"[:64],
                "manufacturer": "poseface-edge",
                "model": "pose-robust face recognition camera",
                "sw_version": __version__,
            },
            "origin": {"name": "poseface-edge", "sw_version": __version__},
        }
        if suffix == "last_person":
            config.update(
                value_template="{{ value_json.person }}",
                json_attributes_topic=state,
                icon="mdi:account-check",
            )
        elif suffix == "unknown_face":
            config.update(payload_on="ON", payload_off="OFF", device_class="occupancy", icon="mdi:account-question")
        elif suffix == "people_in_view":
            config.update(state_class="measurement", icon="mdi:account-group")
        return config

    # -- cameras ------------------------------------------------------------------------------
    def _camera(self, label: str) -> tuple[_Camera, bool]:
        camera = self._cameras.get(label)
        if camera is not None:
            return camera, False
        camera = _Camera(label=label, id=self.camera_id(label))
        self._cameras[label] = camera
        return camera, True

    def add_camera(self, label: str) -> list[Message]:
        """Register a camera; the messages to publish now (configs and states, or the clearing)."""
        with self._lock:
            _, new = self._camera(label)
            if not new:
                return []
            return self._announce(label)

    def _announce(self, label: str) -> list[Message]:
        if not self.enabled:
            return self.clear_messages(label)
        return self._configs(label) + self._states(self._cameras[label], force=True)

    def _configs(self, label: str) -> list[Message]:
        cid = self.camera_id(label)
        return [
            Message(
                self.config_topic(component, cid, suffix),
                json.dumps(self.discovery_config(label, component, suffix, name), separators=(",", ":")),
                self.config_qos,
            )
            for component, suffix, name in ENTITIES
        ]

    def clear_messages(self, label: str) -> list[Message]:
        """Empty retained payloads on every config and state topic of a camera (HA removes the entities)."""
        topics = self.topics(label)
        return [Message(topic, "", self.config_qos) for topic in topics["config"] + topics["state"]]

    def connect_messages(self) -> list[Message]:
        """Everything to (re)publish after a (re)connection."""
        with self._lock:
            out: list[Message] = []
            for label, camera in self._cameras.items():
                if self.enabled:
                    out += self._configs(label) + self._states(camera, force=True)
                else:
                    out += self._announce(label)
            return out

    # -- states -------------------------------------------------------------------------------
    def _states(self, camera: _Camera, force: bool = False) -> list[Message]:
        values = {
            "unknown_face": "ON" if "unknown" in camera.tracks.values() else "OFF",
            "people_in_view": str(len(camera.tracks)),
        }
        if camera.last_person is not None:
            values["last_person"] = json.dumps(camera.last_person, ensure_ascii=False, separators=(",", ":"))
        out = []
        for _, suffix, _ in ENTITIES:
            if suffix not in values:
                continue
            topic = self.state_topic(camera.id, suffix)
            if force or camera.published.get(topic) != values[suffix]:
                out.append(Message(topic, values[suffix], 0))
                camera.published[topic] = values[suffix]
        return out

    def update(self, event: Event) -> list[Message]:
        """Follow one event; the state messages that changed (and a new camera's configs)."""
        if not self.enabled:
            return []
        with self._lock:
            camera, new = self._camera(event.source)
            out = self._announce(event.source) if new else []
            if event.type == "recognised":
                camera.tracks[event.track_id] = "known"
                camera.last_person = {
                    "person": event.identity,
                    "score": event.score,
                    "yaw": event.yaw,
                    "track_id": event.track_id,
                    "time": event.time,
                    "frame": event.frame,
                }
            elif event.type == "unknown_face":
                camera.tracks[event.track_id] = "unknown"
            elif event.type == "track_ended":
                camera.tracks.pop(event.track_id, None)
            return out + self._states(camera)
