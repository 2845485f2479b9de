"""The CRD contract: generated files match the models, schemas are structural and documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from whm_ha.crd.generate import all_files, crd_manifest, write_all
from whm_ha.crd.resources import ALL, CustomResource

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"


def test_checked_in_crds_match_the_models(tmp_path: Path) -> None:
    write_all(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    checked_in = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    assert generated == checked_in, "crds/ holds other files than `whm-ha crds` generates"
    for name, text in all_files().items():
        assert (CRD_DIR / name).read_text() == text, f"crds/{name} is stale: run `whm-ha crds` and commit the result"


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _walk(sub, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("resource", ALL, ids=lambda r: r.kind)
def test_schema_is_structural_and_documented(resource: CustomResource) -> None:
    schema = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema, resource.kind):
        assert "type" in node, f"{path} has no type (not structural)"
        if not path.endswith(("[]", "{}", ".metadata")):
            assert node.get("description"), f"{path} has no description (kubectl explain would be empty)"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        if node["type"] == "object" and "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties and additionalProperties"
            for required in node.get("required", []):
                assert required in node["properties"], f"{path} requires unknown {required}"
        if node["type"] == "string" and path.startswith(f"{resource.kind}.spec"):
            assert "enum" in node or "maxLength" in node, f"{path}: unbounded string (CEL cost)"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list (CEL cost)"


@pytest.mark.parametrize("resource", ALL, ids=lambda r: r.kind)
def test_status_has_no_defaults_and_subresource(resource: CustomResource) -> None:
    version = crd_manifest(resource)["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "default" not in yaml.safe_dump(status).split(":")[0::2]
    assert all("default" not in node for _, node in _walk(status, "status"))


def test_printer_columns() -> None:
    columns = {
        r.kind: [c["name"] for c in crd_manifest(r)["spec"]["versions"][0]["additionalPrinterColumns"]] for r in ALL
    }
    assert columns == {
        "WHMCluster": ["Primary", "Healthy", "Phase", "Age"],
        "WHMNode": ["Cluster", "Address", "Role", "Health", "Priority", "Age"],
        "MySQLReplication": ["Primary", "Ready", "Max Lag", "Phase", "Age"],
        "MySQLBackup": ["Replication", "Phase", "Member", "Size", "Completed", "Age"],
    }


def test_metadata_schema_is_bare() -> None:
    for resource in ALL:
        schema = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema["properties"]["metadata"] == {"type": "object"}, "kube-apiserver forbids more"


def test_names_and_short_names() -> None:
    names = {r.kind: crd_manifest(r)["spec"]["names"] for r in ALL}
    assert names["WHMCluster"]["shortNames"] == ["whmc"]
    assert names["WHMNode"]["shortNames"] == ["whmn"]
    assert names["MySQLReplication"]["shortNames"] == ["myrepl"]
    for resource in ALL:
        manifest = crd_manifest(resource)
        assert manifest["spec"]["group"] == "ha.whm.io"
        assert manifest["spec"]["scope"] == "Namespaced"
        assert manifest["spec"]["versions"][0]["name"] == "v1alpha1"


def test_nested_objects_default_to_empty_so_their_defaults_apply() -> None:
    spec = crd_manifest(ALL[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    health = spec["properties"]["healthCheck"]
    assert health["default"] == {
        "type": "http",
        "path": "/healthz",
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
        "successThreshold": 1,
    }, "the whole default: kube-apiserver checks it against the CEL rules as it is"
    assert health["properties"]["periodSeconds"]["default"] == 5
    assert health["properties"]["timeoutSeconds"]["default"] == 2
    assert health["properties"]["failureThreshold"]["default"] == 3
    assert health["properties"]["successThreshold"]["default"] == 1
    assert "default" not in spec["properties"]["discovery"]
