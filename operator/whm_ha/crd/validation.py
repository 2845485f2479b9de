"""Admit objects against a CRD's structural schema as kube-apiserver does: prune, default, validate.

Used by the tests (examples and invalid objects) and by the sandbox API server. Errors carry
Kubernetes-style field paths (``spec.members[0].port``). CEL rules (``x-kubernetes-validations``)
are evaluated with the common-expression-language package; transition rules (those that use
``oldSelf``) are evaluated only on updates, as on a real server.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

import cel
import jsonschema

JsonSchema = dict[str, Any]
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class FieldError:
    """One invalid field, shaped like a Kubernetes StatusCause."""

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def prune(schema: JsonSchema, value: Any, *, root: bool = True) -> Any:
    """Drop fields the schema does not know (metadata is left to the server's own handling)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is None and isinstance(additional, dict):
            return {k: prune(additional, v, root=False) for k, v in value.items()}
        if properties is None:
            return value
        kept = {}
        for key, sub in value.items():
            if key in properties:
                kept[key] = sub if (root and key == "metadata") else prune(properties[key], sub, root=False)
        return kept
    if isinstance(value, list) and schema.get("type") == "array" and "items" in schema:
        return [prune(schema["items"], item, root=False) for item in value]
    return value


def apply_defaults(schema: JsonSchema, value: Any) -> Any:
    """Fill in defaults of absent fields, recursively, inside the objects that are present."""
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties", {})
        result = dict(value)
        for key, sub in properties.items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = apply_defaults(sub, result[key])
        additional = schema.get("additionalProperties")
        if not properties and isinstance(additional, dict):
            result = {k: apply_defaults(additional, v) for k, v in result.items()}
        return result
    if isinstance(value, list) and schema.get("type") == "array" and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _schema_errors(schema: JsonSchema, value: Any) -> list[FieldError]:
    validator = jsonschema.Draft7Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "?"
            errors.append(FieldError(_path([*path, missing]), "FieldValueRequired", "Required value"))
        elif error.validator == "enum":
            allowed = ", ".join(f'"{v}"' for v in error.validator_value)
            errors.append(
                FieldError(
                    _path(path),
                    "FieldValueNotSupported",
                    f"Unsupported value: {error.instance!r}: supported values: {allowed}",
                )
            )
        elif error.validator == "type":
            errors.append(
                FieldError(
                    _path(path),
                    "FieldValueTypeInvalid",
                    f"Invalid value: {error.instance!r}: must be of type {error.validator_value}",
                )
            )
        else:
            errors.append(FieldError(_path(path), "FieldValueInvalid", f"Invalid value: {error.message}"))
    return errors


_OLD_SELF = re.compile(r"\boldSelf\b")


def _is_cidr(text: str) -> bool:
    """Kubernetes' CEL ``isCIDR``: an address and a prefix length (host bits allowed)."""
    try:
        ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


KUBERNETES_FUNCTIONS = {"isCIDR": _is_cidr}
"""The Kubernetes CEL library functions the CRDs use, beyond the CEL standard."""


def _cel_errors(schema: JsonSchema, value: Any, old: Any, path: list[str | int]) -> list[FieldError]:
    errors: list[FieldError] = []
    for rule in schema.get("x-kubernetes-validations", []):
        expression = rule["rule"]
        transition = bool(_OLD_SELF.search(expression))
        if transition and old is None:
            continue
        context = cel.Context({"self": value, **({"oldSelf": old} if transition else {})}, KUBERNETES_FUNCTIONS)
        field = _path(path) + rule.get("fieldPath", "")
        try:
            holds = cel.evaluate(expression, context)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: rule {expression!r}: {exc}"))
            continue
        if holds is not True:
            message = rule.get("message") or f"failed rule: {expression}"
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {message}"))
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                sub_old = old.get(key) if isinstance(old, dict) else None
                errors += _cel_errors(sub, value[key], sub_old, [*path, key])
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, None, [*path, index])
    return errors


def validate(schema: JsonSchema, value: Any, old: Any = None) -> list[FieldError]:
    """Schema errors first; CEL rules run only on an object that passes the schema."""
    errors = _schema_errors(schema, value)
    if errors:
        return errors
    return _cel_errors(schema, value, old, [])


def admit(
    schema: JsonSchema, obj: dict[str, Any], old: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[FieldError]]:
    """Prune, default and validate a whole custom resource object, as kube-apiserver does on write."""
    pruned = prune(schema, obj)
    for key in _ROOT_FIELDS:
        if key in obj:
            pruned[key] = obj[key]
    defaulted = apply_defaults(schema, pruned)
    return defaulted, validate(schema, defaulted, old)


def unknown_fields(schema: JsonSchema, value: Any, path: str = "") -> list[str]:
    """Paths of fields the schema would prune (what strict field validation reports)."""
    found: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is None and isinstance(additional, dict):
            for key, sub in value.items():
                found += unknown_fields(additional, sub, f"{path}.{key}" if path else key)
            return found
        if properties is None:
            return found
        for key, sub in value.items():
            child = f"{path}.{key}" if path else key
            if key not in properties:
                found.append(child)
            elif not (path == "" and key in _ROOT_FIELDS):
                found += unknown_fields(properties[key], sub, child)
    elif isinstance(value, list) and schema.get("type") == "array" and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_fields(schema["items"], item, f"{path}[{index}]")
    return found


def schema_problems(schema: JsonSchema) -> list[FieldError]:
    """What kube-apiserver refuses in a CRD's openAPIV3Schema beyond structure: a metadata schema
    with more than name and generateName, and defaults that fail their own schema or CEL rules
    (checked as they are, without filling in nested defaults)."""
    root = "spec.validation.openAPIV3Schema"
    problems: list[FieldError] = []
    metadata = schema.get("properties", {}).get("metadata")
    if metadata is not None and set(metadata) - {"type"}:
        problems.append(
            FieldError(
                f"{root}.properties[metadata]",
                "FieldValueForbidden",
                "Forbidden: must not specify anything other than name and generateName, "
                "but metadata is implicitly specified",
            )
        )

    def walk(node: JsonSchema, path: str) -> None:
        if "default" in node:
            for error in validate(node, node["default"]):
                problems.append(
                    FieldError(f"{path}.default", "FieldValueInvalid", f"Invalid value: {error.field}: {error.message}")
                )
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.properties[{name}]")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}.items")

    walk(schema, root)
    return problems
