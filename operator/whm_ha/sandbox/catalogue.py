"""The resource types the sandbox serves: Kubernetes built-ins, and custom resources from CRDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kmock

ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
SHORT_NAMES = {
    ("", "configmaps"): ("cm",),
    ("", "endpoints"): ("ep",),
    ("", "events"): ("ev",),
    ("", "namespaces"): ("ns",),
    ("", "pods"): ("po",),
    ("", "services"): ("svc",),
    ("", "serviceaccounts"): ("sa",),
    ("apiextensions.k8s.io", "customresourcedefinitions"): ("crd", "crds"),
    ("apps", "deployments"): ("deploy",),
    ("policy", "poddisruptionbudgets"): ("pdb",),
}
WITH_STATUS = {
    ("", "pods"),
    ("", "services"),
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("batch", "jobs"),
}
REVIEWS = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}


@dataclass(frozen=True)
class ResourceType:
    """One served resource: names, scope, verbs and (for custom resources) schema and columns."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False
    schema: dict[str, Any] | None = None
    columns: tuple[dict[str, Any], ...] = ()
    custom: bool = False
    crd_name: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Objects are stored per (group, plural), whatever version is asked for."""
        return (self.group, self.plural)

    def discovery(self) -> list[dict[str, Any]]:
        """APIResource entries, including the status subresource."""
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": sorted(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.has_status:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


class CRDError(ValueError):
    """A CustomResourceDefinition the sandbox cannot serve."""


def builtin_types() -> list[ResourceType]:
    """Every built-in resource kmock knows (from a recent cluster's discovery), stored as plain objects."""
    catalogue = kmock.ResourcesArray()
    catalogue.load_bundled()
    types = []
    for resource in catalogue:
        group, version, plural = str(resource.group or ""), str(resource.version or ""), str(resource.plural or "")
        if "/" in plural or not version:
            continue
        info = catalogue[resource]
        kind = str(info.kind or "")
        key = (group, plural)
        verbs = tuple(sorted(info.verbs)) if key not in REVIEWS else ("create",)
        types.append(
            ResourceType(
                group=group,
                version=version,
                plural=plural,
                kind=kind,
                singular=info.singular or kind.lower(),
                namespaced=bool(info.namespaced),
                verbs=verbs,
                short_names=SHORT_NAMES.get(key, ()),
                has_status=key in WITH_STATUS,
            )
        )
    return types


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        raise CRDError("spec.group, spec.names.plural and spec.names.kind are required")
    expected = f"{plural}.{group}"
    if crd.get("metadata", {}).get("name") != expected:
        raise CRDError(f'metadata.name must be "{expected}"')
    scope = spec.get("scope", "Namespaced")
    if scope not in ("Namespaced", "Cluster"):
        raise CRDError(f"spec.scope must be Namespaced or Cluster, not {scope!r}")
    versions = spec.get("versions") or []
    if not versions:
        raise CRDError("spec.versions must list at least one version")
    types = []
    for version in versions:
        if not version.get("served", True):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        types.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=plural,
                kind=kind,
                singular=names.get("singular") or kind.lower(),
                namespaced=scope == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                has_status="status" in (version.get("subresources") or {}),
                schema=schema,
                columns=tuple(version.get("additionalPrinterColumns") or ()),
                custom=True,
                crd_name=expected,
            )
        )
    return types


@dataclass
class Catalogue:
    """The resource types served now; CRDs add and remove theirs at run time."""

    types: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)

    @classmethod
    def with_builtins(cls) -> Catalogue:
        catalogue = cls()
        for resource_type in builtin_types():
            catalogue.add(resource_type)
        return catalogue

    def add(self, resource_type: ResourceType) -> None:
        self.types[(resource_type.group, resource_type.version, resource_type.plural)] = resource_type

    def remove_crd(self, crd_name: str) -> None:
        for key in [k for k, t in self.types.items() if t.crd_name == crd_name]:
            del self.types[key]

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.types.get((group, version, plural))

    def groups(self) -> dict[str, list[str]]:
        """Group name → served versions (the core group is the empty string)."""
        found: dict[str, list[str]] = {}
        for group, version, _ in self.types:
            versions = found.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        return found

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for (g, v, _), t in sorted(self.types.items()) if g == group and v == version]
