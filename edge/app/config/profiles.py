"""Device profiles: the TOML layer a config loads beneath itself for one kind of device.

``profile = "pi4"`` (or ``--profile pi4``) names a file holding what differs between devices:
backend, threads, input sizes, the camera pipeline (``firmware_configs/profiles``: pi4, pi5,
jetson_nano, jetson_orin). A name is looked up in the config's own ``profiles/`` folder, then in
this checkout's ``firmware_configs/profiles``, then in ``/etc/poseface-edge/profiles``; a name
ending in ``.toml`` is a path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edge.app.config.errors import ConfigError, _is_file, _show

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # edge/
# Where a device profile named by ``profile = "NAME"`` is looked for, after the config's own
# folder: the checkout's firmware_configs (an editable install, the tests), then the place the
# firmware README copies them to.
CHECKOUT_PROFILES = PACKAGE_DIR.parent / "firmware_configs" / "profiles"
SYSTEM_PROFILES = Path("/etc/poseface-edge/profiles")


def profile_dirs(config_dir: Path | None = None) -> list[Path]:
    """Where profile names are looked up, first match wins."""
    dirs = [config_dir / "profiles"] if config_dir is not None else []
    return dirs + [CHECKOUT_PROFILES, SYSTEM_PROFILES]


def available_profiles(config_dir: Path | None = None) -> list[str]:
    names = set()
    for folder in profile_dirs(config_dir):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml"))
    return sorted(names)


def find_profile(name: Any, config_dir: Path | None, origin: str) -> Path:
    """A profile name (``pi4``) or a ``.toml`` path -> the profile file; ``origin`` is blamed on failure."""
    if isinstance(name, str) and name.endswith(".toml"):
        try:
            path = Path(name).expanduser()
        except RuntimeError:
            raise ConfigError(origin, "profile", "a path whose ~user exists", name) from None
        if not path.is_absolute():
            path = (config_dir or Path.cwd()) / path
        if _is_file(path):
            return path
        raise ConfigError(origin, "profile", "an existing profile file", f"{path}, which does not exist")
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        for folder in profile_dirs(config_dir):
            if _is_file(folder / f"{name}.toml"):
                return folder / f"{name}.toml"
    known = ", ".join(available_profiles(config_dir)) or "none found"
    raise ConfigError(origin, "profile", f"a profile name ({known}) or a path to a .toml file", _show(name))
