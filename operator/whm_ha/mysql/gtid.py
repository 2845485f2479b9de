"""GTID sets of MySQL and MariaDB as immutable values: parse, format, contains, difference, union, count.

MySQL (``uuid[:tag]:1-5:7-9,...``) is a real set of transactions and is handled exactly.

MariaDB reports positions, not sets: a GTID is ``domain-server-seq`` and a server shows the last GTID per domain
(``@@gtid_binlog_pos``) or per (domain, server) (``@@gtid_binlog_state``). This module models each domain as one
linear history numbered by seq, and a value as, per domain, the seqs ``after+1..top`` (``after`` is 0 for anything
read from a server) plus the last GTID of each server in that range. Simplifications, all implied by
``gtid_strict_mode``:

* a value holding ``d-s-n`` holds the prefix ``1..n`` of domain ``d``, including every earlier GTID of server ``s``;
* two values share a domain's history up to their *agreement point*: the highest ``min(seq)`` over the servers both
  list (0 if none). Beyond it their histories differ: the same seq from different servers is divergent, and so
  are an old primary's ``0-1-101`` and a new primary's ``0-1-98,0-2-105`` (seqs 99-101 of server 1 are errant);
* a count is the number of seqs in range, assuming a domain's seqs have no gaps.

So ``contains`` is a preorder, not a partial order: the position ``0-2-105`` and the state ``0-1-98,0-2-105``
contain each other. A binlog state missing older servers (a replica seeded from a backup) still compares right,
because only each domain's last GTID must agree. Differences print as ``d-s-first..last``; a difference or union
that would not be one range per domain raises ValueError (only possible when an operand is itself a difference).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

Flavor = Literal["mariadb", "mysql"]

Interval = tuple[int, int]
"""Inclusive ``(first, last)``."""

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TAG = re.compile(r"[a-z_][a-z0-9_]{0,31}")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_MARIADB_GTID = re.compile(r"(\d+)-(\d+)-(\d+)(?:\.\.(\d+))?")
_MAX_GNO = 2**63 - 1
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class GtidParseError(ValueError):
    """The text is not a GTID set of the flavor."""


class GtidSet(ABC):
    """An immutable GTID set; operands of the binary operations must have the same flavor."""

    flavor: ClassVar[Flavor]

    @abstractmethod
    def contains(self, other: GtidSet) -> bool:
        """Whether every GTID of ``other`` is in this set (superset or equal)."""

    @abstractmethod
    def difference(self, other: GtidSet) -> GtidSet:
        """The GTIDs in this set that are not in ``other``."""

    @abstractmethod
    def union(self, other: GtidSet) -> GtidSet:
        """The GTIDs in either set."""

    @property
    @abstractmethod
    def count(self) -> int:
        """How many transactions the set holds."""

    @property
    @abstractmethod
    def origins(self) -> frozenset[str]:
        """The servers whose transactions the set holds: MariaDB server ids, MySQL source UUIDs."""

    @abstractmethod
    def __str__(self) -> str:
        """The canonical text, as the server would accept it."""

    def __bool__(self) -> bool:
        return self.count > 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def _check(self, other: GtidSet) -> None:
        if other.flavor != self.flavor:
            raise TypeError(f"cannot combine a {self.flavor} GTID set with a {other.flavor} one")


def _items(text: str) -> list[str]:
    """The comma-separated elements of a server's GTID text, whitespace and newlines dropped."""
    return [item.strip() for item in text.replace("\n", "").split(",") if item.strip()]


def parse_gtid_set(flavor: Flavor, text: str | None) -> GtidSet:
    """Parse a server's GTID text (None or "" is the empty set)."""
    if flavor == "mariadb":
        return MariaDBGtidSet.parse(text or "")
    return MySQLGtidSet.parse(text or "")


# --- intervals -------------------------------------------------------------------------------------------------


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sorted, non-overlapping, non-adjacent intervals."""
    merged: list[Interval] = []
    for first, last in sorted(intervals):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def _subtract(left: tuple[Interval, ...], right: tuple[Interval, ...]) -> tuple[Interval, ...]:
    """``left`` minus ``right``; both merged."""
    result: list[Interval] = []
    for first, last in left:
        start = first
        for cut_first, cut_last in right:
            if cut_last < start or cut_first > last:
                continue
            if cut_first > start:
                result.append((start, cut_first - 1))
            start = cut_last + 1
            if start > last:
                break
        if start <= last:
            result.append((start, last))
    return tuple(result)


# --- MySQL -----------------------------------------------------------------------------------------------------

MySQLKey = tuple[str, str]
"""``(source uuid, tag)``; the tag is "" for untagged GTIDs."""


@dataclass(frozen=True, repr=False)
class MySQLGtidSet(GtidSet):
    """A MySQL ``gtid_executed``-style set: per source uuid (and tag), merged intervals."""

    flavor: ClassVar[Flavor] = "mysql"
    entries: tuple[tuple[MySQLKey, tuple[Interval, ...]], ...] = ()
    """Sorted by key; every interval tuple merged and non-empty."""

    @classmethod
    def from_intervals(cls, mapping: Mapping[MySQLKey, Iterable[Interval]]) -> MySQLGtidSet:
        """Build a normalized set from possibly overlapping intervals."""
        entries = []
        for key, intervals in sorted(mapping.items()):
            merged = _merge(intervals)
            if merged:
                entries.append((key, merged))
        return cls(tuple(entries))

    @classmethod
    def parse(cls, text: str) -> MySQLGtidSet:
        """Parse ``uuid:1-5:7,uuid2:tag:1-3`` (whitespace and newlines allowed)."""
        found: dict[MySQLKey, list[Interval]] = {}
        for item in _items(text):
            uuid, *parts = (part.strip() for part in item.split(":"))
            uuid = uuid.lower()
            if not _UUID.fullmatch(uuid):
                raise GtidParseError(f"not a MySQL server uuid: {uuid!r} in {item!r}")
            tag, tag_has_interval, any_interval = "", True, False
            for part in parts:
                match = _RANGE.fullmatch(part)
                if match:
                    first = int(match.group(1))
                    last = int(match.group(2) or first)
                    if not 1 <= first <= last <= _MAX_GNO:
                        raise GtidParseError(f"bad interval {part!r} in {item!r}")
                    found.setdefault((uuid, tag), []).append((first, last))
                    tag_has_interval = any_interval = True
                elif _TAG.fullmatch(part.lower()) and tag_has_interval:
                    tag, tag_has_interval = part.lower(), False
                else:
                    raise GtidParseError(f"bad element {part!r} in {item!r}")
            if not (any_interval and tag_has_interval):
                raise GtidParseError(f"missing interval in {item!r}")
        return cls.from_intervals(found)

    def _other(self, other: GtidSet) -> MySQLGtidSet:
        self._check(other)
        assert isinstance(other, MySQLGtidSet)
        return other

    def contains(self, other: GtidSet) -> bool:
        return not self._other(other).difference(self)

    def difference(self, other: GtidSet) -> MySQLGtidSet:
        theirs = dict(self._other(other).entries)
        return MySQLGtidSet.from_intervals({key: _subtract(mine, theirs.get(key, ())) for key, mine in self.entries})

    def union(self, other: GtidSet) -> MySQLGtidSet:
        joined: dict[MySQLKey, list[Interval]] = {}
        for key, intervals in (*self.entries, *self._other(other).entries):
            joined.setdefault(key, []).extend(intervals)
        return MySQLGtidSet.from_intervals(joined)

    @property
    def count(self) -> int:
        return sum(last - first + 1 for _, intervals in self.entries for first, last in intervals)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(uuid for (uuid, _), _ in self.entries)

    def __str__(self) -> str:
        by_uuid: dict[str, list[str]] = {}
        for (uuid, tag), intervals in self.entries:
            parts = by_uuid.setdefault(uuid, [uuid])
            if tag:
                parts.append(tag)
            parts.extend(f"{first}-{last}" if last > first else str(first) for first, last in intervals)
        return ",".join(":".join(parts) for parts in by_uuid.values())


# --- MariaDB ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MariaDBDomain:
    """The seqs ``after+1..top`` of one replication domain, with the last seq of each server in that range."""

    domain: int
    after: int
    tops: tuple[tuple[int, int], ...]
    """``(server_id, seq)`` sorted by server id; every seq is above ``after``."""

    @property
    def top(self) -> int:
        return max(seq for _, seq in self.tops)

    def agreement(self, other: MariaDBDomain) -> int:
        """The highest seq up to which both share the domain's history (0: nothing in common is known)."""
        mine = dict(self.tops)
        return max((min(mine[server], seq) for server, seq in other.tops if server in mine), default=0)

    def above(self, seq: int) -> MariaDBDomain | None:
        """This domain without the seqs up to ``seq``; None when nothing is left."""
        after = max(self.after, seq)
        tops = tuple((server, n) for server, n in self.tops if n > after)
        return MariaDBDomain(self.domain, after, tops) if tops else None


@dataclass(frozen=True, repr=False)
class MariaDBGtidSet(GtidSet):
    """A MariaDB GTID position or binlog state, or a difference of two (see the module docstring)."""

    flavor: ClassVar[Flavor] = "mariadb"
    domains: tuple[MariaDBDomain, ...] = ()
    """Sorted by domain id, none empty."""

    @classmethod
    def parse(cls, text: str) -> MariaDBGtidSet:
        """Parse ``0-1-17,1-2-5`` (positions and states); ``d-s-a..b`` is a difference's ranged form."""
        tops: dict[int, dict[int, int]] = {}
        after: dict[int, int] = {}
        for item in _items(text):
            match = _MARIADB_GTID.fullmatch(item)
            if not match:
                raise GtidParseError(f"not a MariaDB GTID: {item!r}")
            domain, server, seq = int(match.group(1)), int(match.group(2)), int(match.group(3))
            if match.group(4) is not None:
                first, seq = seq, int(match.group(4))
                if domain in after or not 1 <= first <= seq:
                    raise GtidParseError(f"bad range {item!r}")
                after[domain] = first - 1
            if domain > _MAX_U32 or server > _MAX_U32 or not 1 <= seq <= _MAX_U64:
                raise GtidParseError(f"GTID out of range: {item!r}")
            if server in tops.setdefault(domain, {}):
                raise GtidParseError(f"server {server} appears twice in domain {domain}")
            tops[domain][server] = seq
        domains = []
        for domain, servers in sorted(tops.items()):
            floor = after.get(domain, 0)
            if min(servers.values()) <= floor:
                raise GtidParseError(f"domain {domain} has a GTID below its range")
            domains.append(MariaDBDomain(domain, floor, tuple(sorted(servers.items()))))
        return cls(tuple(domains))

    def _other(self, other: GtidSet) -> MariaDBGtidSet:
        self._check(other)
        assert isinstance(other, MariaDBGtidSet)
        return other

    def _by_domain(self) -> dict[int, MariaDBDomain]:
        return {d.domain: d for d in self.domains}

    def contains(self, other: GtidSet) -> bool:
        mine = self._by_domain()
        for theirs in self._other(other).domains:
            here = mine.get(theirs.domain)
            if here is None or here.after > theirs.after or here.agreement(theirs) < theirs.top:
                return False
        return True

    def difference(self, other: GtidSet) -> MariaDBGtidSet:
        """The seqs beyond the agreement point; ValueError if ``other`` starts later in a domain (not one range)."""
        theirs = self._other(other)._by_domain()
        result = []
        for mine in self.domains:
            cut = theirs.get(mine.domain)
            if cut is None:
                result.append(mine)
                continue
            shared = min(cut.top, mine.agreement(cut))
            if shared <= max(mine.after, cut.after):
                result.append(mine)
                continue
            if cut.after > mine.after:
                raise ValueError(f"domain {mine.domain}: the difference is not one range")
            left = mine.above(shared)
            if left is not None:
                result.append(left)
        return MariaDBGtidSet(tuple(result))

    def union(self, other: GtidSet) -> MariaDBGtidSet:
        """Per (domain, server) the later GTID; ValueError if two ranges of a domain leave a gap."""
        theirs = self._other(other)._by_domain()
        joined = self._by_domain()
        for domain, cut in theirs.items():
            mine = joined.get(domain)
            if mine is None:
                joined[domain] = cut
                continue
            if mine.after > cut.top or cut.after > mine.top:
                raise ValueError(f"domain {domain}: the union is not one range")
            servers = dict(mine.tops)
            for server, seq in cut.tops:
                servers[server] = max(seq, servers.get(server, 0))
            joined[domain] = MariaDBDomain(domain, min(mine.after, cut.after), tuple(sorted(servers.items())))
        return MariaDBGtidSet(tuple(joined[d] for d in sorted(joined)))

    @property
    def count(self) -> int:
        return sum(d.top - d.after for d in self.domains)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(str(server) for d in self.domains for server, _ in d.tops)

    def position(self) -> str:
        """The last GTID of every domain: the form ``MASTER_GTID_WAIT`` and ``gtid_slave_pos`` take."""
        return ",".join(next(f"{d.domain}-{s}-{n}" for s, n in d.tops if n == d.top) for d in self.domains)

    def __str__(self) -> str:
        items = []
        for d in self.domains:
            ranged = d.after > 0
            for server, seq in d.tops:
                if ranged and seq == d.top:
                    items.append(f"{d.domain}-{server}-{d.after + 1}..{seq}")
                    ranged = False
                else:
                    items.append(f"{d.domain}-{server}-{seq}")
        return ",".join(items)


def resume_position(binlog_pos: str, slave_pos: str) -> str:
    """Where a MariaDB replica resumes: per domain, the later of the last GTID its binlog holds and its
    ``gtid_slave_pos``. ``@@gtid_current_pos`` trusts ``gtid_slave_pos`` for other servers' GTIDs, and that lags
    the binlog when applying a DDL was killed after it was binlogged; a replica seeded from a backup has an
    empty binlog and only its ``gtid_slave_pos``. Seqs grow along a domain (``gtid_strict_mode``), so the later is
    the higher."""
    return MariaDBGtidSet.parse(binlog_pos).union(MariaDBGtidSet.parse(slave_pos)).position()
