"""The layers a config is read from, below the typed sections of :mod:`skinray.config`: named recipes, a YAML file
(local or S3), ``--set section.key=value`` strings, and the keys that moved to a shared section.

Why a module of its own: ``skinray.config`` says what each setting means and allows; this says how text becomes the
mapping those sections validate, so the schema reads without the plumbing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from skinray import SkinrayError

# Keys that moved to a shared section: old config files keep working, with a warning naming the new key.
MOVED_KEYS = {
    "prepare.schema": "manifest.schema",
    "prepare.image_template": "manifest.image_template",
    "prepare.malignant_dx": "manifest.malignant_dx",
    "score.engine": "inference.engine",
    "score.tta": "inference.tta",
    "evaluate.bootstrap": "metrics.bootstrap",
    **{f"score.{key}": f"inference.{key}" for key in (
        "actors", "min_actors", "max_actors", "cpus_per_actor", "use_gpu", "gpu_wait_seconds")},
}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            logging.getLogger("skinray").warning("config key %s is now %s", old, new)
            new_section, new_key = new.split(".")
            data.setdefault(new_section, {}).setdefault(new_key, value)
    return data


def format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "finite_number":
        return f"invalid config value for {where}: {first['input']!r} is not a finite number"
    return f"invalid config value for {where}: {first['msg']}"


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for key in parts[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SkinrayError(f"config key {dotted!r}: {key!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value read as YAML (so ``3``, ``true``, ``[a, b]`` keep their types)."""
    if "=" not in text:
        raise SkinrayError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip(), None
    try:
        return key.strip(), yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError):  # e.g. a template such as {images}/{x}.jpg: not YAML, so the text itself
        return key.strip(), raw


RECIPES_DIR = Path(__file__).with_name("recipes")


def recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(name: str) -> dict[str, Any]:
    """A named training recipe: a YAML layer shipped in the package (``seed``: the notebook; ``improved``)."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SkinrayError(f"unknown recipe {name!r}; choose one of {recipes()}")
    return {**(yaml.safe_load(path.read_text()) or {}), "recipe": name}


def read_file(path: str) -> dict[str, Any]:
    """A config file (local or S3) as a mapping of sections."""
    from skinray.io import storage

    try:
        data = yaml.safe_load(storage.read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise SkinrayError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SkinrayError(f"config file {path} must hold a mapping of sections")
    return data
