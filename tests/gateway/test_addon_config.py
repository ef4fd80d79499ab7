"""The add-on's metadata: valid for the add-on linter's schema, no key set to its default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon"
LINTER_SCHEMA = ROOT.parent / "shared" / "schemas" / "addon-config.schema.json"


@pytest.fixture(scope="module")
def linter_schema() -> dict[str, Any]:
    assert LINTER_SCHEMA.is_file(), f"the add-on linter's schema is expected at {LINTER_SCHEMA}"
    schema: dict[str, Any] = json.loads(LINTER_SCHEMA.read_text())
    return schema


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ADDON / "config.yaml").read_text())
    return document


def test_config_is_valid_for_the_linter_schema(
    config: dict[str, Any], linter_schema: dict[str, Any]
) -> None:
    errors = sorted(Draft7Validator(linter_schema).iter_errors(config), key=str)
    assert not errors, "\n".join(error.message for error in errors)


def test_no_key_is_set_to_its_default(
    config: dict[str, Any], linter_schema: dict[str, Any]
) -> None:
    properties = linter_schema["properties"]
    defaults = {
        key: properties[key]["default"]
        for key in config
        if key in properties and "default" in properties[key]
    }
    redundant = [key for key, default in defaults.items() if config[key] == default]
    assert not redundant, f"keys set to their default value: {redundant}"


def test_supported_architectures_and_services(config: dict[str, Any]) -> None:
    assert config["arch"] == ["aarch64", "amd64"]
    assert config["slug"] == "i4t_gateway"
    assert "mqtt:need" in config["services"]
    assert config["discovery"] == ["i4t"]


def test_every_option_has_a_schema_entry_and_a_translation(config: dict[str, Any]) -> None:
    translations = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text())
    assert set(config["options"]) <= {key.rstrip("?") for key in config["schema"]}
    assert set(translations["configuration"]) == {key.rstrip("?") for key in config["schema"]}


def test_version_matches_the_gateway_package(config: dict[str, Any]) -> None:
    pyproject = (ADDON / "pyproject.toml").read_text()
    assert f'version = "{config["version"]}"' in pyproject


def test_repository_manifest_at_the_root() -> None:
    manifest = yaml.safe_load((ROOT / "repository.yaml").read_text())
    assert manifest["name"]
    assert manifest["url"].startswith("https://")
