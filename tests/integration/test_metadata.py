"""The integration's metadata as hassfest and HACS read it."""

from __future__ import annotations

import json
from pathlib import Path
import re

import yaml

ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = ROOT / "custom_components" / "i4t"
HACS_KEYS = {
    "name",
    "homeassistant",
    "hacs",
    "content_in_root",
    "zip_release",
    "filename",
    "hide_default_branch",
    "country",
    "persistent_directory",
    "render_readme",
}
# The 52 rules of the Integration Quality Scale in HA 2025.4.
QUALITY_RULES = {
    "action-setup",
    "appropriate-polling",
    "brands",
    "common-modules",
    "config-flow",
    "config-flow-test-coverage",
    "dependency-transparency",
    "docs-actions",
    "docs-high-level-description",
    "docs-installation-instructions",
    "docs-removal-instructions",
    "entity-event-setup",
    "entity-unique-id",
    "has-entity-name",
    "runtime-data",
    "test-before-configure",
    "test-before-setup",
    "unique-config-entry",
    "action-exceptions",
    "config-entry-unloading",
    "docs-configuration-parameters",
    "docs-installation-parameters",
    "entity-unavailable",
    "integration-owner",
    "log-when-unavailable",
    "parallel-updates",
    "reauthentication-flow",
    "test-coverage",
    "devices",
    "diagnostics",
    "discovery-update-info",
    "discovery",
    "docs-data-update",
    "docs-examples",
    "docs-known-limitations",
    "docs-supported-devices",
    "docs-supported-functions",
    "docs-troubleshooting",
    "docs-use-cases",
    "dynamic-devices",
    "entity-category",
    "entity-device-class",
    "entity-disabled-by-default",
    "entity-translations",
    "exception-translations",
    "icon-translations",
    "reconfiguration-flow",
    "repair-issues",
    "stale-devices",
    "async-dependency",
    "inject-websession",
    "strict-typing",
}


def test_manifest_keys_in_hassfest_order() -> None:
    manifest = json.loads((INTEGRATION / "manifest.json").read_text())
    keys = list(manifest)
    assert keys[:2] == ["domain", "name"]
    assert keys[2:] == sorted(keys[2:])
    assert manifest["domain"] == INTEGRATION.name
    assert manifest["iot_class"] == "local_push"
    assert manifest["integration_type"] == "hub"
    assert manifest["config_flow"] is True
    assert manifest["dependencies"] == ["bluetooth_adapters", "mqtt"]
    for key in ("version", "codeowners", "documentation", "issue_tracker"):
        assert manifest[key]


def test_hacs_json_has_only_known_keys() -> None:
    hacs = json.loads((ROOT / "hacs.json").read_text())
    assert set(hacs) <= HACS_KEYS
    assert hacs["name"]


def test_quality_scale_names_every_rule_with_a_valid_status() -> None:
    rules = yaml.safe_load((INTEGRATION / "quality_scale.yaml").read_text())["rules"]
    assert set(rules) == QUALITY_RULES
    for rule, status in rules.items():
        if isinstance(status, dict):
            assert status["status"] in {"todo", "done", "exempt"}, rule
            if status["status"] == "exempt":
                assert status.get("comment"), f"{rule}: an exemption needs a reason"
        else:
            assert status in {"todo", "done"}, rule


def test_brand_icon_is_a_png() -> None:
    assert (INTEGRATION / "brand" / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_translations_cover_the_code_and_nothing_is_left_over() -> None:
    strings = json.loads((INTEGRATION / "translations" / "en.json").read_text())
    source = "\n".join(path.read_text() for path in INTEGRATION.glob("*.py"))
    aborts = set(strings["config"]["abort"]) | set(strings["config_subentries"]["group"]["abort"])
    for issue in strings["issues"].values():
        aborts |= set(issue.get("fix_flow", {}).get("abort", {}))
    for reason in re.findall(r'reason="([a-z_]+)"', source):
        assert reason in aborts, reason
    used = set(re.findall(r'translation_key\s*=\s*"([a-z_]+)"', source))
    exceptions = set(strings["exceptions"])
    entity_keys = {key for platform in strings["entity"].values() for key in platform}
    issues = set(strings["issues"])
    assert used <= exceptions | entity_keys | issues, used - exceptions - entity_keys - issues
    assert exceptions <= used, f"unused exception messages: {exceptions - used}"
    services = yaml.safe_load((INTEGRATION / "services.yaml").read_text())
    assert set(services) == set(strings["services"])
    for name, service in services.items():
        assert set(service["fields"]) == set(strings["services"][name]["fields"]), name
