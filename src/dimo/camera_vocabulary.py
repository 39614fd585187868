"""The 21 camera-motion types of 3DiMo (supplementary C) and the prompt text for each.

The vocabulary itself is data (``camera_vocabulary.yml`` next to this file); this module only loads it and
turns an entry into a prompt. Every part of the project that names a camera motion uses these keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_VOCAB_FILE = Path(__file__).with_name("camera_vocabulary.yml")


@dataclass(frozen=True)
class CameraMotion:
    key: str
    label: str
    category: str
    phrase: str
    trajectory: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def describe(self, **overrides) -> str:
        """The camera sentence, e.g. 'The camera arcs 30 degrees to the left around the subject.'"""
        return self.phrase.format(**{**self.params, **overrides})


@functools.cache
def _load() -> tuple[str, dict[str, CameraMotion]]:
    raw = yaml.safe_load(_VOCAB_FILE.read_text())
    entries = {key: CameraMotion(key=key, **value) for key, value in raw["entries"].items()}
    return raw["prompt_template"], entries


def vocabulary() -> dict[str, CameraMotion]:
    """All camera motions by key, in the paper's order."""
    return dict(_load()[1])


def keys() -> list[str]:
    return list(_load()[1])


def get(key: str) -> CameraMotion:
    entries = _load()[1]
    if key not in entries:
        raise KeyError(f"unknown camera motion {key!r}; known: {', '.join(entries)}")
    return entries[key]


def normalise_label(label: str) -> str:
    """Map a user label ('Arc Left 30', 'arc-left-30', 'Static') to a vocabulary key, or raise KeyError."""
    text = str(label).strip().lower().replace("-", " ").replace("_", " ").replace("°", "")
    text = " ".join(text.replace("degrees", "").split())
    for key, motion in _load()[1].items():
        candidates = {key.replace("_", " "), motion.label.lower().replace("-", " ")}
        if "angle" in motion.params:
            candidates = {key.replace("_", " "), f"{motion.label.lower()} {motion.params['angle']}"}
        if text in candidates:
            return key
    raise KeyError(f"unknown camera motion label {label!r}")


def prompt(camera_key: str, subject: str = "A person", action: str = "performs a motion", **overrides) -> str:
    """The full text prompt: subject, action and the camera sentence from the template."""
    template, _ = _load()
    return template.format(subject=subject, action=action, camera=get(camera_key).describe(**overrides))
