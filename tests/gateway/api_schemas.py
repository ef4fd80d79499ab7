"""The API's JSON schemas, as shipped in the gateway package, for validating what it publishes."""

from __future__ import annotations

from functools import cache
from importlib import resources
import json
from typing import Any

from jsonschema import Draft202012Validator


@cache
def validator(name: str) -> Draft202012Validator:
    text = resources.files("i4t_gateway").joinpath("schemas", f"{name}.schema.json").read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(name: str, payload: bytes) -> dict[str, Any]:
    """Decode a JSON payload and check it against the named schema; return it."""
    document: dict[str, Any] = json.loads(payload)
    validator(name).validate(document)
    return document
