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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..kube.client import ApiError, KubeClient, Resource
from .errors import ShimError

TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", namespaced=False)
ACCESS_REVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews", namespaced=False)
CACHE_SECONDS = 10.0
"""How long a TokenReview or SubjectAccessReview answer is reused."""
FAILURE_CACHE_SECONDS = 2.0
"""How long a token found invalid stays refused without asking again: a flood of bad tokens costs at most one
TokenReview per token per this period, and a token that becomes valid works soon."""
CACHE_ENTRIES = 10_000
"""Answers kept at most per cache; the least recently used go first."""
MAX_TOKEN = 8192
ANONYMOUS = "system:anonymous"


K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """A bounded LRU of answers with their expiry."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> tuple[V] | None:
        """The answer, if kept and not expired, as a 1-tuple (so that None can be an answer)."""
        found = self._items.get(key)
        if found is None or time.monotonic() >= found[0]:
            self._items.pop(key, None)
            return None
        self._items.move_to_end(key)
        return (found[1],)

    def put(self, key: K, value: V, seconds: float) -> None:
        self._items[key] = (time.monotonic() + seconds, value)
        self._items.move_to_end(key)
        while len(self._items) > self._entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


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
    _identities: _Cache[str, Caller | None] = field(default_factory=_Cache)
    _decisions: _Cache[tuple[str, Permission], tuple[bool, str]] = field(default_factory=_Cache)

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
        if len(token) > MAX_TOKEN:
            raise ShimError(401, "UNAUTHENTICATED", f"the bearer token is longer than {MAX_TOKEN} characters")
        key = digest(token)
        for user, expected in self.static_tokens.items():
            if hmac.compare_digest(key, expected):
                return Caller(user, ("whm-ha:static-token",))
        cached = self._identities.get(key)
        if cached is not None:
            (caller,) = cached
        else:
            caller = await self._token_review(token)
            self._identities.put(key, caller, CACHE_SECONDS if caller is not None else FAILURE_CACHE_SECONDS)
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
        if cached is not None:
            ((allowed, reason),) = cached
        else:
            allowed, reason = await self._access_review(caller, permission)
            self._decisions.put(key, (allowed, reason), CACHE_SECONDS if allowed else FAILURE_CACHE_SECONDS)
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
