"""Generate apiextensions.k8s.io/v1 CustomResourceDefinitions from the pydantic models.

pydantic's JSON schema is turned into a Kubernetes structural schema: references inlined,
optional fields unwrapped (absent rather than null), titles dropped, nested objects given their
whole default, metadata left bare (kube-apiserver forbids more), and no defaults in status (only the
operator writes it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from .kopf_peering import PEERING_CRDS
from .resources import ALL, CustomResource

JsonSchema = dict[str, Any]


class _StructuralSchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, with the complete default object for nested-model fields.

    A bare ``{}`` would do for defaulting, but kube-apiserver checks each default against the CEL rules
    without filling in the nested defaults first, so the default must be whole.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return factory().model_dump(by_alias=True, exclude_none=True, mode="json")
        default = super().get_default_value(schema)
        return NoDefault if default is None else default


def _resolve(node: Any, defs: dict[str, JsonSchema]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [option for option in any_of if option != {"type": "null"}]
        if len(non_null) == 1:
            merged = {**non_null[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            return _resolve(merged, defs)
    result: JsonSchema = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "const":
            result["enum"] = [value]
            continue
        if key == "properties":
            result[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        else:
            result[key] = _resolve(value, defs)
    if "enum" in result and "type" not in result:
        result["type"] = "string"
    return result


def _strip_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_defaults(item) for item in node]
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    return node


def model_schema(model: type[BaseModel], *, with_defaults: bool = True) -> JsonSchema:
    """The structural openAPIV3Schema of one model."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_StructuralSchemaGenerator)
    schema: JsonSchema = _resolve(raw, raw.get("$defs", {}))
    return schema if with_defaults else _strip_defaults(schema)


def resource_schema(resource: CustomResource) -> JsonSchema:
    """The openAPIV3Schema of a whole custom resource object."""
    return {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object (ha.whm.io/v1alpha1)."},
            "kind": {"type": "string", "description": f"Kind of the object ({resource.kind})."},
            "metadata": {"type": "object"},
            "spec": model_schema(resource.spec),
            "status": model_schema(resource.status, with_defaults=False),
        },
    }


def crd_manifest(resource: CustomResource) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/part-of": "whm-ha"},
        },
        "spec": {
            "group": resource.group,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["whm-ha"],
            },
            "versions": [
                {
                    "name": resource.version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": column.name,
                            "type": column.type,
                            "jsonPath": column.json_path,
                            "description": column.description,
                            **({"priority": column.priority} if column.priority else {}),
                        }
                        for column in resource.columns
                    ],
                    "schema": {"openAPIV3Schema": resource_schema(resource)},
                }
            ],
        },
    }


HEADER = "# Generated by `whm-ha crds` from operator/whm_ha/crd/. Do not edit.\n"


def render(resource: CustomResource) -> str:
    """The CRD as the YAML text checked into crds/."""
    return HEADER + yaml.safe_dump(crd_manifest(resource), sort_keys=False, width=100)


def file_name(resource: CustomResource) -> str:
    return f"{resource.group}_{resource.plural}.yaml"


def all_files() -> dict[str, str]:
    """File name -> text of every CRD the project installs: ours and kopf's peering CRDs."""
    files = {file_name(resource): render(resource) for resource in ALL}
    for crd in PEERING_CRDS:
        spec = crd["spec"]
        files[f"{spec['group']}_{spec['names']['plural']}.yaml"] = HEADER + yaml.safe_dump(crd, sort_keys=False)
    return files


def write_all(out_dir: Path) -> list[Path]:
    """Write one file per CRD into out_dir; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in all_files().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written
