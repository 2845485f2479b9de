"""Blocking sequences against the members, run in worker threads (``asyncio.to_thread``): reconcile, prepare a
promotion, promote. They are built from the idempotent steps of `whm_ha.mysql.actions`, so running one again
after an interruption is safe."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import pymysql

from ..crd.mysqlreplication import Member, MySQLReplicationSpec, PromotionProgress
from ..mysql import actions
from ..mysql.actions import GtidResult, PromotionError
from ..mysql.dialect import SQL, Dialect, Source
from ..mysql.gtid import GtidSet
from ..mysql.member import Credentials, MemberState, Session, connect, describe_error, inspect, read_state
from ..mysql.topology import CONNECTION_ERRNOS, can_rejoin, choose_candidate
from .authority import Confirm
from .plan import Plan, exclusions, only_candidate, quorum_shortfall

SEMI_SYNC_TIMEOUT_MS = 4_294_967_295
"""How long a primary waits for a replica to acknowledge a commit before it falls back to asynchronous: the
largest value both flavours take (49 days), i.e. never while a failover could happen. A primary cut off from
its replicas blocks its writers instead of acknowledging commits that a promotion elsewhere would discard (with
a 10 s fallback, a probe here saw 561 such commits acknowledged and then lost)."""
CATCH_UP_SECONDS = 10.0
"""How long a switchover waits for the candidate to apply what the fenced primary had."""
RELAY_LOG_SECONDS = 30.0
RETRY_CONNECT = 0.5
"""Seconds to connect, at the point of no return, to a member that did not answer moments before."""
"""How long a promotion waits for the candidate to apply its relay log."""

DatabaseError = (pymysql.MySQLError, OSError)


@dataclass(frozen=True, eq=False)
class Access:
    """How to reach the members and as whom; passwords never appear in reprs or messages."""

    members: Mapping[str, Member]
    admin: Credentials
    replication: Credentials
    application: Credentials
    schemas: tuple[str, ...]
    """The schemas of the application account."""
    dialect: Dialect
    timeout: float
    """Seconds to connect to a member, and for a reply when inspecting."""
    waiting_timeout: float
    """Seconds for a reply to a statement that may wait on a replication thread."""
    net_timeout: int
    """The replicas' net timeout."""
    tls: ssl.SSLContext | None = None
    """TLS on the operator's own sessions, the members verified as it says (``spec.tls``); None: plaintext."""
    tls_ca_file: str | None = None
    """With ``tls``: the CA bundle on the members that replicas verify their source with (``spec.tls.caFile``);
    the replication channels use TLS exactly when the operator's sessions do."""

    def connect(self, name: str, *, timeout: float | None = None) -> Session:
        """An administrative session: connected within ``timeout`` (default: the access's), replies within the
        waiting timeout."""
        member = self.members[name]
        return connect(
            name,
            member.host,
            member.port,
            self.admin,
            self.dialect,
            timeout=timeout if timeout is not None else self.timeout,
            read_timeout=self.waiting_timeout,
            tls=self.tls,
        )

    def inspect(self, name: str) -> MemberState:
        member = self.members[name]
        state = inspect(name, member.host, member.port, self.admin, self.dialect, timeout=self.timeout, tls=self.tls)
        if state.error is None:
            return state
        return MemberState.unreachable(name, state.host, state.port, self.mask(state.error))

    def executed(self, name: str) -> GtidSet:
        """The member's executed GTIDs, read now."""
        with self.connect(name) as session:
            return session.executed()

    def source(self, primary: str) -> Source:
        member = self.members[primary]
        return Source(
            member.host,
            member.port,
            self.replication.username,
            self.replication.password,
            tls=self.tls is not None,
            tls_ca=self.tls_ca_file,
        )

    def mask(self, text: str) -> str:
        for secret in (self.admin.password, self.replication.password, self.application.password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        return self.mask(describe_error(exc))


@dataclass
class Outcome:
    """What a reconcile pass did and found."""

    changes: list[str] = field(default_factory=list)
    fenced: list[str] = field(default_factory=list)
    """Members that were writable and are now read-only."""
    joined: list[str] = field(default_factory=list)
    """Members checked and found free of errant transactions."""
    quarantined: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unsafe: set[str] = field(default_factory=set)
    """Members that may still accept writes: the primary is not opened while there are any."""

    def merge(self, other: Outcome) -> None:
        """Add what ``other`` did and found."""
        self.changes += other.changes
        self.fenced += other.fenced
        self.joined += other.joined
        self.quarantined.update(other.quarantined)
        self.errors += other.errors
        self.unsafe |= other.unsafe


class _Sessions:
    """Sessions opened on demand during one pass, all closed at the end."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.open: dict[str, Session] = {}

    def __getitem__(self, name: str) -> Session:
        if name not in self.open:
            self.open[name] = self.access.connect(name)
        return self.open[name]

    def attempt(self, name: str, what: str, outcome: Outcome) -> Session | None:
        """The member's session, or None with the failure reported and the member counted unsafe."""
        try:
            return self[name]
        except DatabaseError as exc:
            outcome.errors.append(f"{name}: {what}: {self.access.describe(exc)}")
            outcome.unsafe.add(name)
            return None

    def __enter__(self) -> _Sessions:
        return self

    def __exit__(self, *_: object) -> None:
        for session in self.open.values():
            session.close()


LOCK_WAIT_TIMEOUT = 1205
FENCE_POLL_SECONDS = 0.01
"""How often the fence's own wait is looked for before the clients are killed."""


def _kill(session: Session, connections: SQL, spare: Collection[int] = ()) -> None:
    """Kill the connections the query lists, in its order, but those in ``spare``: their clients get an error."""
    for (connection,) in session.rows(connections):
        if int(connection) in spare:
            continue
        with contextlib.suppress(pymysql.OperationalError):  # it may have ended meanwhile
            session.execute(SQL("KILL CONNECTION %s", (int(connection),)))


def _kill_semi_sync_waiters(session: Session) -> None:
    """Kill the connections whose commit waits for a replica's acknowledgement: their clients get an error. On a
    former primary cut off from its replicas no acknowledgement will come, and these commits are on no replica."""
    _kill(session, session.dialect.semi_sync_waiters())


def fence(session: Session) -> GtidResult:
    """Make the member read-only. Setting read-only waits for the commits in progress; on a former primary those
    may wait for an acknowledgement that never comes (it was cut off when it was demoted, then came back): the
    fence then times out, and is set once more, on another connection (`Dialect.fence_behind_waiters`), while every
    client connection is killed (`Dialect.client_connections`: not only the waiting ones, as a group commit shows
    one) and, where a kill does not end the wait, the waits are ended with no client left to be told
    (`Dialect.release_semi_sync_waiters`).
    Waiting, that fence holds every new write back: no commit begun after the kills is ended without an
    acknowledgement (on MariaDB, killing the leader of a group commit, which waits for the whole group, ends the
    commits of the group; a client that joined it would be told of one)."""
    try:
        return actions.fence(session)
    except pymysql.OperationalError as exc:
        if not exc.args or exc.args[0] != LOCK_WAIT_TIMEOUT:
            raise
    try:
        for sql in session.dialect.keep_clients_out():
            session.execute(sql)
        with session.another() as other, ThreadPoolExecutor(max_workers=1) as pool:
            (fencer,) = other.row(SQL("SELECT CONNECTION_ID()")) or (0,)
            fencing = pool.submit(_fence_behind_waiters, other)
            waiting = SQL(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s AND state LIKE 'Waiting for%%'",
                (fencer,),
            )
            while not fencing.done() and not (session.row(waiting) or (0,))[0]:
                time.sleep(FENCE_POLL_SECONDS)
            if not fencing.done():
                _kill(session, session.dialect.client_connections(), spare={int(fencer)})
                for sql in session.dialect.release_semi_sync_waiters():
                    session.execute(sql)
            return GtidResult(True, fencing.result().gtid)  # raises what setting read-only raised
    finally:
        for sql in session.dialect.after_release():
            session.execute(sql)


def _fence_behind_waiters(session: Session) -> GtidResult:
    """`Dialect.fence_behind_waiters`, then what the member had executed (nothing more can be)."""
    for sql in session.dialect.fence_behind_waiters():
        session.execute(sql)
    return GtidResult(True, session.executed())


def _source_semi_sync_off(session: Session) -> bool:
    """Turn the source side of semi-sync off (a replica must not wait for acknowledgements). Commits still
    waiting there for an acknowledgement would be acknowledged to their clients, though no replica has them:
    their connections are killed first (the member is fenced by then, so no new one starts)."""
    dialect = session.dialect
    variable = dialect.semi_sync_variables["source_enabled"]
    values = {str(name): str(value).upper() for name, value in session.rows(dialect.semi_sync_variables_query())}
    if values.get(variable) != "ON":
        return False
    _kill_semi_sync_waiters(session)
    session.execute(dialect.set_global(variable, "OFF"))
    return True


def reconcile(access: Access, primary: str, plan: Plan, confirm: Confirm) -> Outcome:
    """Apply ``plan``. A member that fails is reported and skipped; the primary is opened for writes only when
    every member the inspection saw writable was fenced, and with semi-sync only once its source side is on (the
    accounts are made and the replicas joined before). Each change of a member's role or of its replication is
    confirmed first (``confirm`` raises Superseded, which ends the pass)."""
    outcome = Outcome()
    with _Sessions(access) as sessions:

        def each(name: str, what: str, step: Callable[[Session], bool], change: str) -> None:
            """One member's step of a setting that needs no primary, confirmed first; failures reported."""
            confirm(f"{what} on {name}")
            try:
                session = sessions.attempt(name, what, outcome)
                if session is not None and step(session):
                    outcome.changes.append(f"{name}: {change}")
            except DatabaseError as exc:
                outcome.errors.append(f"{name}: {what}: {access.describe(exc)}")

        for name in plan.fence:
            confirm(f"fence {name}")
            session = sessions.attempt(name, "fence", outcome)
            try:
                if session is not None and fence(session).changed:
                    outcome.fenced.append(name)
                    outcome.changes.append(f"{name}: made read-only")
            except DatabaseError as exc:
                outcome.errors.append(f"{name}: fence: {access.describe(exc)}")
                outcome.unsafe.add(name)
        opening = plan.open_primary and not outcome.unsafe
        variable = f"{access.dialect.net_timeout_variable} = {access.net_timeout}"
        for name in plan.net_timeout:  # restarts a running IO thread
            each(name, "net timeout", partial(actions.ensure_net_timeout, seconds=access.net_timeout), variable)
        for name in plan.secure_transport:
            each(name, "secure transport", actions.require_secure_transport, "require_secure_transport = ON")
        allow = partial(actions.require_secure_transport, required=False)
        for name in plan.plaintext_allowed:  # before TLS is disabled (a CEL rule keeps the two apart)
            each(name, "secure transport", allow, "require_secure_transport = OFF")
        if plan.ensure_user or plan.join or plan.open_primary or plan.semi_sync:
            head = sessions.attempt(primary, "connect", outcome)
            if head is not None:
                _converge_primary(sessions, head, plan, confirm, outcome, opening=opening)
        for name in plan.source_off:
            if name not in outcome.unsafe:  # not known to be fenced: its waiting commits stay unacknowledged
                each(name, "semi-sync", _source_semi_sync_off, "semi-sync source side off")
    return outcome


def _converge_primary(
    sessions: _Sessions, head: Session, plan: Plan, confirm: Confirm, outcome: Outcome, *, opening: bool
) -> None:
    """The steps of ``plan`` that need the primary: its accounts, the joins, semi-sync, and last its opening."""
    access = sessions.access
    if opening:
        opening = _allow_admin_writes(access, head, confirm, outcome)
    if plan.ensure_user:
        _ensure_accounts(access, head, outcome)
    for name in plan.join:
        confirm(f"make {name} a replica of {head.name}")
        _join(
            access, sessions, name, outcome, primary=head.name, primary_executed=head.executed, semi_sync=plan.semi_sync
        )
    if plan.semi_sync:
        confirm("enable semi-sync")
        wanted = [n for n in plan.replicas if n not in outcome.quarantined and n not in outcome.unsafe]
        replicas = [s for n in wanted if (s := sessions.attempt(n, "semi-sync", outcome)) is not None]
        opening = _enable_semi_sync(access, head, replicas, outcome) and opening
    if opening:
        _open(access, head, confirm, outcome)


def _enable_semi_sync(access: Access, head: Session, replicas: list[Session], outcome: Outcome) -> bool:
    """Semi-sync on the primary and ``replicas``; whether the primary's source side is on (else it must not open:
    it would acknowledge writes that no replica has)."""
    try:
        if actions.enable_semi_sync(head, replicas, SEMI_SYNC_TIMEOUT_MS):
            outcome.changes.append("semi-sync enabled")
    except DatabaseError as exc:
        outcome.errors.append(f"{head.name}: {access.describe(exc)}")
        return False
    return True


def _allow_admin_writes(access: Access, head: Session, confirm: Confirm, outcome: Outcome) -> bool:
    """Before the primary opens: let the administrative account make the accounts on it (a MySQL server started
    with super_read_only refuses CREATE USER); applications still cannot write. Whether it may be opened."""
    try:
        confirm(f"let the administrative account write on {head.name}")
        if actions.allow_admin_writes(head):
            outcome.changes.append(f"{head.name}: writable by the administrative account")
    except DatabaseError as exc:
        outcome.errors.append(f"{head.name}: open: {access.describe(exc)}")
        return False
    return True


def _open(access: Access, head: Session, confirm: Confirm, outcome: Outcome) -> None:
    """Open the primary for writes. Every member the inspection saw writable is fenced by then."""
    try:
        confirm(f"open {head.name} for writes")
        if actions.promote(head).changed:
            outcome.changes.append(f"{head.name}: accepts writes")
    except DatabaseError as exc:
        outcome.errors.append(f"{head.name}: open: {access.describe(exc)}")


def _ensure_accounts(access: Access, head: Session, outcome: Outcome) -> None:
    """The replication and application accounts on the primary."""
    repl, app = access.replication, access.application
    try:
        if actions.ensure_replication_user(head, repl.username, repl.password):
            outcome.changes.append(f"{head.name}: replication account {repl.username} set up")
    except DatabaseError as exc:
        outcome.errors.append(f"{head.name}: replication account: {access.describe(exc)}")
    try:
        if actions.ensure_application_user(head, app.username, app.password, access.schemas):
            outcome.changes.append(f"{head.name}: application account {app.username} set up")
    except DatabaseError as exc:
        outcome.errors.append(f"{head.name}: application account: {access.describe(exc)}")


def _join(
    access: Access,
    sessions: _Sessions,
    name: str,
    outcome: Outcome,
    *,
    primary: str,
    primary_executed: Callable[[], GtidSet],
    semi_sync: bool,
) -> None:
    """Fence the member, stop it replicating from any other source, then make it a replica of ``primary`` unless
    it has transactions the primary lacks (the member's read after the stop, then ``primary_executed()``); its
    source side of semi-sync is turned off, and with ``semi_sync`` its replica side on, before it replicates."""
    try:
        session = sessions[name]
        fenced = fence(session)
    except DatabaseError as exc:
        outcome.errors.append(f"{name}: fence: {access.describe(exc)}")
        outcome.unsafe.add(name)
        return
    if fenced.changed:
        outcome.fenced.append(name)
        outcome.changes.append(f"{name}: made read-only")
    try:
        source = access.source(primary)
        executed = fenced.gtid
        if actions.stop_other_source(session, source):
            executed = session.executed()  # read once nothing more can arrive from elsewhere
        verdict = can_rejoin(executed, primary_executed())
        if not verdict.ok:
            outcome.quarantined[name] = verdict.reason
            return
        outcome.joined.append(name)
        # Before its applier starts: with the source side on, the applier's commits would wait for an
        # acknowledgement no replica of this member sends.
        if _source_semi_sync_off(session):
            outcome.changes.append(f"{name}: semi-sync source side off")
        if semi_sync and actions.replica_semi_sync_on(session):
            outcome.changes.append(f"{name}: semi-sync replica side on")
        if actions.ensure_replica(session, source):
            outcome.changes.append(f"{name}: replicates from {primary}")
    except DatabaseError as exc:
        outcome.errors.append(f"{name}: join: {access.describe(exc)}")


def fence_if_reachable(access: Access, name: str, *, timeout: float | None = None) -> GtidResult | None:
    """Make the member read-only if it answers; None when no session can be opened (within ``timeout``, default
    the access's): nothing reaches it, and it is fenced when it answers again, before it may rejoin. Any failure
    after it answered raises: a member that answers but is not known to be fenced must not be outlived by a
    promotion (a failover then starts again, and meets it unreachable or fences it)."""
    try:
        session = access.connect(name, timeout=timeout)
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] in CONNECTION_ERRNOS:
            return None
        raise
    with session:
        return fence(session)


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` learnt that ``finish`` uses."""

    unreachable: tuple[str, ...] = ()
    """Members found unreachable when fencing."""
    fenced: tuple[str, ...] = ()
    """Members found fenced (the old primary of a switchover, the stopped replicas)."""


def prepare(
    access: Access,
    record: PromotionProgress,
    spec: MySQLReplicationSpec,
    quarantined: Mapping[str, str],
    confirm: Confirm,
) -> Prepared:
    """Everything before the point of no return; raises PromotionError (or a driver error) to abandon, Superseded
    when ``confirm`` refuses the first write.

    Switchover: fence the old primary, wait until the candidate applied all it had. Failover: try to fence the old
    primary while every replica stops receiving; should it answer, abandon (it is not dead); otherwise check on
    fresh states that the candidate is still the one to promote (nothing can arrive any more). A failover
    abandoned leaves the old primary's replicas receiving again (`_resume_receiving`), so that it can be tried
    again."""
    confirm(f"fence {record.from_} to promote {record.to}")
    if record.planned:
        with access.connect(record.from_) as old, access.connect(record.to) as candidate:
            fenced = fence(old)
            if not actions.wait_applied(candidate, fenced.gtid, CATCH_UP_SECONDS):
                raise PromotionError(
                    f"{record.to} did not apply {record.from_}'s transactions {fenced.gtid} "
                    f"within {CATCH_UP_SECONDS:g}s"
                )
        return Prepared(fenced=(record.from_,))
    try:
        return _prepare_failover(access, record, spec, quarantined)
    except (PromotionError, *DatabaseError):
        _resume_receiving(access, record.from_, confirm)
        raise


def _prepare_failover(
    access: Access, record: PromotionProgress, spec: MySQLReplicationSpec, quarantined: Mapping[str, str]
) -> Prepared:
    """``prepare`` of a failover; the replicas are left stopped whatever it raises."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Meanwhile the replicas stop receiving: a vanished primary costs one timeout, not two.
        fencing = pool.submit(fence_if_reachable, access, record.from_)
        states = _stopped_replicas(access, record.from_)
        if fencing.result() is not None:
            # It answers after all: not dead. Its last transactions may be on no replica; promoting would drop
            # them. It is read-only now; the next pass opens it again.
            raise PromotionError(f"the primary {record.from_} answers again: it is not dead")
    short = quorum_shortfall(spec, record.from_, {s.name: s for s in states})
    if short and not record.force:
        raise PromotionError(f"after stopping the replicas: {short}")
    members = spec.members
    candidates = members if record.type == "automatic" else only_candidate(members, record.to)
    choice = choose_candidate(
        states, candidates, spec.max_lag_seconds, force=record.force, exclude=exclusions(record.from_, quarantined)
    )
    if choice.candidate != record.to:
        why = choice.refusals.get(record.to, f"{choice.candidate} ranks first now")
        raise PromotionError(f"{record.to} is no longer the member to promote: {why}")
    return Prepared(unreachable=(record.from_,), fenced=tuple(s.name for s in states if s.fenced))


def _resume_receiving(access: Access, old_primary: str, confirm: Confirm) -> None:
    """After a failover was abandoned: start again, all at once, the stopped IO threads of the old primary's
    replicas. Stopped by the operator, they no longer count as having lost it (`primary_confirmed_dead` cannot
    tell such a stop from a human's), so no later attempt could confirm its death; should it live, they receive
    from it again. Best effort: a member that fails is left as it is (a later pass joins it once the primary
    answers)."""
    source = access.members[old_primary]
    names = [name for name in access.members if name != old_primary]
    confirm(f"let {', '.join(names)} receive from {old_primary} again")

    def resume(name: str) -> None:
        with contextlib.suppress(*DatabaseError), access.connect(name) as session:
            actions.resume_receiving(session, source.host, source.port)

    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        list(pool.map(resume, names))


def _stopped_replicas(access: Access, old_primary: str) -> list[MemberState]:
    """Every member but the old primary, with its IO thread stopped: fresh states to choose from, in which nothing
    can arrive any more. A member that cannot be reached or stopped is reported unreachable (not a candidate)."""
    states: list[MemberState] = []
    with _Sessions(access) as sessions:
        reachable = []
        for name in access.members:
            if name == old_primary:
                continue
            try:
                reachable.append(sessions[name])
            except DatabaseError as exc:
                states.append(MemberState.unreachable(name, "", 0, access.describe(exc)))
        lost = actions.stop_io_threads(reachable)
        states += [MemberState.unreachable(name, "", 0, why) for name, why in lost.items()]
        states += [read_state(s) for s in reachable if s.name not in lost]
    return states


@dataclass(frozen=True)
class Finished:
    """What ``finish`` did besides opening the candidate."""

    unfenced: tuple[str, ...]
    """Members that could not be reached to be made read-only."""
    joins: Outcome
    """The members made replicas of the candidate before it opened (or found to hold what it lacks)."""


def finish(
    access: Access,
    record: PromotionProgress,
    confirm: Confirm,
    unreachable: Collection[str] = (),
    fenced: Collection[str] = (),
    *,
    semi_sync: bool = False,
) -> Finished:
    """The point of no return: every other member that answers is made read-only while the candidate stops
    receiving and applies its relay log (all at once, so that members that do not answer cost one timeout);
    then, with every answering member read-only, the candidate accepts writes (an old primary removed from
    spec.members is no longer reached). Members in ``fenced`` (known fenced since they last answered) are
    skipped: one that accepts connections but cannot serve them must not hold the promotion up. ``unreachable``:
    members ``prepare`` just found unreachable, tried again with a short connect timeout (one that came back is
    fenced; one that comes back later is fenced when it answers, before it may rejoin). Before the candidate
    opens, the members known fenced but not ``unreachable`` are made its replicas (with ``semi_sync``, the
    replica side on; then its source side): its first commits are acknowledged at once, not after the next
    pass's inspection. A join that fails does not stop the opening (the next pass joins the member). Both the
    first write and the joins, and the opening of the candidate, are confirmed (Superseded)."""
    others = [n for n in access.members if n != record.to and n not in fenced]
    confirm(f"fence the others and detach {record.to}")
    with access.connect(record.to) as session, ThreadPoolExecutor(max_workers=len(access.members)) as pool:
        fencing = [
            pool.submit(fence_if_reachable, access, name, timeout=RETRY_CONNECT if name in unreachable else None)
            for name in others
        ]
        actions.detach(session, timeout=RELAY_LOG_SECONDS)
        results = dict(zip(others, [future.result() for future in fencing], strict=True))
        unfenced = tuple(name for name, result in results.items() if result is None)
        known_fenced = set(fenced).union(name for name, result in results.items() if result is not None)
        replicas = [n for n in access.members if n in known_fenced and n != record.to and n not in unreachable]
        joins = Outcome()
        if replicas:
            confirm(f"make {', '.join(replicas)} replicas of {record.to}")
            executed = session.executed()  # final until it opens: it is read-only and replicates from nothing
            for done in [pool.submit(_join_alone, access, record.to, executed, n, semi_sync) for n in replicas]:
                joins.merge(done.result())
        confirm(f"open {record.to} for writes")
        if semi_sync:
            actions.source_semi_sync_on(session, SEMI_SYNC_TIMEOUT_MS)
        actions.promote(session)
    return Finished(unfenced, joins)


def _join_alone(access: Access, primary: str, executed: GtidSet, name: str, semi_sync: bool) -> Outcome:
    """`_join` in a session of its own, to a primary whose executed GTIDs are ``executed`` and stay so."""
    outcome = Outcome()
    with _Sessions(access) as sessions:
        _join(access, sessions, name, outcome, primary=primary, primary_executed=lambda: executed, semi_sync=semi_sync)
    return outcome
