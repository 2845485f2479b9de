"""TokenReview and SubjectAccessReview answered from a users-and-permissions file.

The file (YAML) lists users, their bearer tokens, groups, and RBAC-like rules::

    users:
      - name: admin
        token: admin-token
        groups: [system:masters]          # system:masters may do anything
      - name: reader
        token: reader-token
        rules:
          - apiGroups: ["ha.whm.io"]
            resources: ["*"]               # "whmclusters/status" names a subresource
            verbs: ["get", "list", "watch"]
            namespaces: ["default"]        # optional; absent means every namespace
    groups:                                # optional: rules granted to every member of a group
      readers:
        - {apiGroups: ["*"], resources: ["*"], verbs: ["get", "list"]}

Only the reviews use it: requests to the sandbox itself are not authenticated.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUPERUSER_GROUP = "system:masters"


@dataclass(frozen=True)
class Rule:
    """One permission: verbs on resources of API groups, optionally in some namespaces."""

    verbs: frozenset[str]
    api_groups: frozenset[str]
    resources: frozenset[str]
    namespaces: frozenset[str] | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Rule:
        namespaces = raw.get("namespaces")
        return cls(
            verbs=frozenset(raw.get("verbs") or ()),
            api_groups=frozenset(raw.get("apiGroups") or ("",)),
            resources=frozenset(raw.get("resources") or ()),
            namespaces=frozenset(namespaces) if namespaces is not None else None,
        )

    def allows(self, verb: str, group: str, resource: str, subresource: str, namespace: str) -> bool:
        target = f"{resource}/{subresource}" if subresource else resource
        return (
            ("*" in self.verbs or verb in self.verbs)
            and ("*" in self.api_groups or group in self.api_groups)
            and ("*" in self.resources or target in self.resources)
            and (self.namespaces is None or namespace in self.namespaces)
        )


@dataclass(frozen=True)
class User:
    name: str
    token: str
    groups: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


@dataclass
class Directory:
    """The users and permissions the reviews consult."""

    users: list[User] = field(default_factory=list)
    group_rules: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> Directory:
        if path is None:
            return cls()
        raw = yaml.safe_load(path.read_text()) or {}
        users = [
            User(
                name=u["name"],
                token=str(u["token"]),
                groups=tuple(u.get("groups") or ()),
                rules=tuple(Rule.parse(r) for r in u.get("rules") or ()),
            )
            for u in raw.get("users") or []
        ]
        groups = {name: tuple(Rule.parse(r) for r in rules or ()) for name, rules in (raw.get("groups") or {}).items()}
        return cls(users=users, group_rules=groups)

    def authenticate(self, token: str) -> User | None:
        found = None
        for user in self.users:
            if hmac.compare_digest(user.token.encode(), token.encode()):
                found = user
        return found

    def token_review(self, review: dict[str, Any]) -> dict[str, Any]:
        token = (review.get("spec") or {}).get("token") or ""
        user = self.authenticate(token)
        status: dict[str, Any]
        if user is None:
            status = {"authenticated": False, "error": "invalid bearer token"}
        else:
            status = {
                "authenticated": True,
                "user": {"username": user.name, "groups": [*user.groups, "system:authenticated"]},
            }
        return {**review, "status": status}

    def allowed(self, username: str, groups: list[str], attributes: dict[str, Any]) -> tuple[bool, str]:
        if SUPERUSER_GROUP in groups:
            return True, f"{username} is in {SUPERUSER_GROUP}"
        rules: list[Rule] = []
        for user in self.users:
            if user.name == username:
                rules += user.rules
        for group in groups:
            rules += self.group_rules.get(group, ())
        verb = attributes.get("verb", "")
        group = attributes.get("group", "")
        resource = attributes.get("resource", "")
        subresource = attributes.get("subresource", "")
        namespace = attributes.get("namespace", "")
        for rule in rules:
            if rule.allows(verb, group, resource, subresource, namespace):
                return True, "allowed by the sandbox permissions file"
        return False, f"{username} may not {verb} {resource}{'/' + subresource if subresource else ''}"

    def subject_access_review(self, review: dict[str, Any]) -> dict[str, Any]:
        spec = review.get("spec") or {}
        attributes = spec.get("resourceAttributes")
        if attributes is None:
            allowed, reason = (SUPERUSER_GROUP in (spec.get("groups") or []), "non-resource request")
        else:
            allowed, reason = self.allowed(spec.get("user", ""), list(spec.get("groups") or []), attributes)
        status = (
            {"allowed": allowed, "reason": reason} if allowed else {"allowed": False, "denied": False, "reason": reason}
        )
        return {**review, "status": status}
