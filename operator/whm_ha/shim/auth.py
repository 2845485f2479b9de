"""Who is calling, and may they: TokenReview and SubjectAccessReview against the Kubernetes API.

Bearer tokens are authenticated with a TokenReview; optionally, static tokens for tools without a
Kubernetes identity come from a Secret whose keys are user names and whose values are
``sha256:<hex digest of the token>`` (compared in constant time). Every request is then authorized with
a SubjectAccessReview on the resource the endpoint reads or changes. Answers are cached briefly by the
token's digest, never by the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field

from ..kube.client import ApiError, KubeClient, Resource
from .errors import ShimError

TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", namespaced=False)
ACCESS_REVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews", namespaced=False)
CACHE_SECONDS = 10.0
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class Caller:
    """An authenticated (or anonymous) caller."""

    username: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Permission:
    """What an endpoint needs: a verb on one of our resources."""

    verb: str
    resource: str
    subresource: str = ""
    group: str = "ha.whm.io"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Authorizer:
    """Authentication and authorization, backed by the API server."""

    kube: KubeClient
    namespace: str
    anonymous_reads: bool = False
    static_tokens: dict[str, str] = field(default_factory=dict)
    """user name -> hex SHA-256 of the token."""
    _identities: dict[str, tuple[float, Caller | None]] = field(default_factory=dict)
    _decisions: dict[tuple[str, Permission], tuple[float, bool, str]] = field(default_factory=dict)

    async def load_static_tokens(self, secret: str) -> None:
        """Read ``<user>: sha256:<hex>`` entries from a Secret."""
        obj = await self.kube.get(Resource("", "v1", "secrets"), self.namespace, secret)
        tokens = {}
        for user, value in (obj.get("data") or {}).items():
            text = base64.b64decode(value).decode().strip()
            if text.startswith("sha256:"):
                tokens[user] = text.removeprefix("sha256:").lower()
        self.static_tokens = tokens

    async def authenticate(self, header: str | None, *, read_only: bool) -> Caller:
        """The caller behind an Authorization header; 401 when missing or not valid."""
        if not header:
            if self.anonymous_reads and read_only:
                return Caller(ANONYMOUS, ("system:unauthenticated",))
            raise ShimError(401, "UNAUTHENTICATED", "missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ShimError(401, "UNAUTHENTICATED", "the Authorization header must be 'Bearer <token>'")
        key = digest(token)
        for user, expected in self.static_tokens.items():
            if hmac.compare_digest(key, expected):
                return Caller(user, ("whm-ha:static-token",))
        cached = self._identities.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            caller = cached[1]
        else:
            caller = await self._token_review(token)
            self._identities[key] = (time.monotonic(), caller)
        if caller is None:
            raise ShimError(401, "UNAUTHENTICATED", "the bearer token is not valid")
        return caller

    async def _token_review(self, token: str) -> Caller | None:
        try:
            review = await self.kube.create(
                TOKEN_REVIEWS,
                None,
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            )
        except ApiError as exc:
            raise ShimError(503, "AUTH_UNAVAILABLE", f"cannot review the token: {exc.reason or exc.status}") from exc
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        return Caller(user.get("username", ""), tuple(user.get("groups") or ()))

    async def authorize(self, caller: Caller, permission: Permission) -> None:
        """403 unless the caller may do what the endpoint needs."""
        key = (f"{caller.username}|{','.join(caller.groups)}", permission)
        cached = self._decisions.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            allowed, reason = cached[1], cached[2]
        else:
            allowed, reason = await self._access_review(caller, permission)
            self._decisions[key] = (time.monotonic(), allowed, reason)
        if not allowed:
            what = f"{permission.verb} {permission.resource}" + (
                f"/{permission.subresource}" if permission.subresource else ""
            )
            raise ShimError(403, "FORBIDDEN", f"{caller.username} may not {what} in {self.namespace}", reason=reason)

    async def _access_review(self, caller: Caller, permission: Permission) -> tuple[bool, str]:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": caller.username,
                "groups": list(caller.groups),
                "resourceAttributes": {
                    "namespace": self.namespace,
                    "verb": permission.verb,
                    "group": permission.group,
                    "resource": permission.resource,
                    "subresource": permission.subresource,
                },
            },
        }
        try:
            review = await self.kube.create(ACCESS_REVIEWS, None, body)
        except ApiError as exc:
            raise ShimError(503, "AUTH_UNAVAILABLE", f"cannot review access: {exc.reason or exc.status}") from exc
        status = review.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason", ""))
