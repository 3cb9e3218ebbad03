"""The request store: real SQLite files, several connections, several processes.

The only stand-in is the clock (ManualClock), so expiry can be tested without waiting.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.clock import ManualClock
from edge.share.store import (
    DB_NAME,
    Acceptance,
    AcceptResult,
    Rejection,
    RequestStore,
    StoreError,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
T0_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
HOUR_MS = 3_600_000
ISS = "us-wa-seattle-pd"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
def open_store(tmp_path: Path, clock: ManualClock) -> Callable[..., RequestStore]:
    stores: list[RequestStore] = []

    def make(**kwargs: Any) -> RequestStore:
        store = RequestStore(tmp_path / "data", clock, **kwargs)
        stores.append(store)
        return store

    yield make  # type: ignore[misc]
    for store in stores:
        store.close()


def take_in(
    store: RequestStore,
    n: int,
    *,
    iss: str = ISS,
    state: str = "pending",
    exp_ms: int = T0_MS + 24 * HOUR_MS,
    decide_by_ms: int | None = None,
) -> AcceptResult:
    jti = f"00000000-0000-4000-8000-{n:012d}"
    return store.accept(
        iss=iss,
        jti=jti,
        state=state,  # type: ignore[arg-type]
        request={"jti": jti, "iss": iss, "title": "Hit and run", "area": {"type": "Point"}},
        exp_ms=exp_ms,
        window_start_ms=T0_MS - 2 * HOUR_MS,
        window_end_ms=T0_MS - HOUR_MS,
        agency_name="Seattle Police Department",
        topic="edge/v1/req/c/2/3/n/b",
        decide_by_ms=decide_by_ms,
    )


# ------------------------------------------------------------------ taking in


def test_accepted_request_is_kept_with_its_columns(open_store, tmp_path: Path) -> None:
    store = open_store()
    result = take_in(store, 1)
    assert result == AcceptResult(result.id, duplicate=False)
    record = store.get(result.id)
    assert record is not None
    assert (record.state, record.iss, record.agency_name) == (
        "pending",
        ISS,
        "Seattle Police Department",
    )
    assert record.request is not None and record.request["title"] == "Hit and run"
    assert record.window_start_ms == T0_MS - 2 * HOUR_MS
    assert record.decide_by_ms == record.exp_ms == T0_MS + 24 * HOUR_MS

    path = tmp_path / "data" / DB_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_decision_deadline_is_the_earlier_of_exp_and_timeout(open_store) -> None:
    store = open_store()
    record = store.get(take_in(store, 1, decide_by_ms=T0_MS + HOUR_MS).id)
    assert record is not None and record.decide_by_ms == T0_MS + HOUR_MS
    record = store.get(take_in(store, 2, decide_by_ms=T0_MS + 99 * HOUR_MS).id)
    assert record is not None and record.decide_by_ms == record.exp_ms


def test_duplicates_are_keyed_on_iss_and_jti(open_store) -> None:
    store = open_store()
    first = take_in(store, 1)
    again = take_in(store, 1)
    assert again == AcceptResult(first.id, duplicate=True)
    assert take_in(store, 1, state="not_matching").duplicate  # not_matching was accepted too
    # Another agency using the same jti is not a duplicate: it cannot pre-empt one's id.
    other = take_in(store, 1, iss="us-wa-king-county-fire")
    assert not other.duplicate and other.id != first.id
    assert store.seen(ISS, "00000000-0000-4000-8000-000000000001")
    assert store.counts()["pending"] == 2


def test_a_batch_is_taken_in_as_one_change(open_store) -> None:
    store = open_store()
    rev = store.current_rev()

    def item(n: int, state: str, request: dict[str, Any]) -> Acceptance:
        return Acceptance(iss=ISS, jti=f"00000000-0000-4000-8000-{n:012d}", state=state,  # type: ignore[arg-type]
                          request=request, exp_ms=T0_MS + HOUR_MS,
                          window_start_ms=T0_MS - HOUR_MS, window_end_ms=T0_MS)

    results = store.accept_many([item(1, "pending", {"title": "x"}), item(2, "not_matching", {}),
                                 item(1, "pending", {"title": "again"})])
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].id == results[0].id
    new_rev, changed = store.changes_since(rev)
    assert new_rev == rev + 1  # the rows of one transaction share its rev
    assert [(r.id, r.state, r.request) for r in changed] == [
        (results[0].id, "pending", {"title": "x"}), (results[1].id, "not_matching", {})]
    assert all(r.rev == new_rev for r in changed)
    # Only duplicates: nothing written, nothing changed.
    assert [r.duplicate for r in store.accept_many([item(2, "not_matching", {})])] == [True]
    assert store.current_rev() == new_rev


def test_a_rejected_message_reserves_nothing(open_store) -> None:
    store = open_store()
    jti = "00000000-0000-4000-8000-000000000001"
    store.reject(Rejection("bad_signature", T0_MS, topic="edge/v1/req/c", iss=ISS, jti=jti))
    assert not store.seen(ISS, jti)
    assert not take_in(store, 1).duplicate


def test_restart_keeps_pending_and_refuses_duplicates(tmp_path: Path, clock: ManualClock) -> None:
    with RequestStore(tmp_path / "data", clock) as store:
        first = take_in(store, 1)
        take_in(store, 2, state="not_matching")
    with RequestStore(tmp_path / "data", clock) as store:
        assert [r.id for r in store.in_states(["pending"])] == [first.id]
        assert take_in(store, 1).duplicate
        assert take_in(store, 2).duplicate
        assert not take_in(store, 3).duplicate


def test_untrusted_strings_are_bounded(open_store) -> None:
    store = open_store()
    rid = store.reject(
        Rejection(
            "bad_payload", T0_MS, topic="edge/" + "x" * 70_000, iss="i" * 5000, detail="d" * 999
        )
    )
    record = store.get(rid)
    assert record is not None
    assert len(record.topic or "") == 256 and len(record.iss or "") == 256
    assert len(record.detail or "") == 200


# ------------------------------------------------------------------ listing


def test_list_is_shaped_for_edge_requests_json(open_store) -> None:
    store = open_store()
    pending = take_in(store, 1).id
    take_in(store, 2, state="not_matching")
    rejected = store.reject(Rejection("bad_alg", T0_MS + 1500, topic="edge/v1/req/c"))
    assert store.transition(pending, {"pending"}, "denied", decision_channel="cli")

    shown = store.list()
    assert [r["id"] for r in shown] == [pending]
    assert shown[0]["state"] == "denied" and shown[0]["jti"].endswith("1")
    assert shown[0]["window"] == {"start": "2026-11-18T09:06:40Z", "end": "2026-11-18T10:06:40Z"}
    everything = store.list(all=True)
    assert [r["state"] for r in everything] == ["denied", "not_matching", "rejected"]
    row = everything[-1]
    assert row["id"] == rejected and row["reason"] == "bad_alg"
    assert row["jti"] is None and row["iss"] is None
    assert row["received"] == "2026-11-18T11:06:41.500Z"
    for item in everything:
        assert {"id", "jti", "iss", "state", "reason"} <= item.keys()
    json.dumps(everything)  # plain JSON, as the CLI prints it


# ------------------------------------------------------------------ transitions


def test_transitions_follow_the_state_machine(open_store) -> None:
    store = open_store()
    rid = take_in(store, 1).id
    assert store.transition(
        rid, {"pending"}, "approved", decided_by="cli", decision_channel="cli", decided_ms=T0_MS
    )
    assert not store.transition(rid, {"pending"}, "denied")  # no longer pending
    assert store.transition(rid, {"approved"}, "approved", delivery_id="d-1")  # update in place
    assert store.transition(rid, {"approved"}, "delivered")
    record = store.get(rid)
    assert record is not None
    assert (record.state, record.decided_by, record.delivery_id) == ("delivered", "cli", "d-1")

    with pytest.raises(ValueError, match="no transition"):
        store.transition(rid, {"denied"}, "approved")  # denied is final: nothing ever sent
    with pytest.raises(ValueError, match="no transition"):
        store.transition(rid, {"expired"}, "approved")
    with pytest.raises(ValueError, match="cannot set"):
        store.transition(rid, {"pending"}, "approved", state="x")
    with pytest.raises(TypeError):
        store.transition(rid, {"pending"}, "approved", decided_ms="soon")
    assert not store.transition(999, {"pending"}, "denied")


def test_the_owner_may_narrow_the_window_never_widen_it(open_store) -> None:
    store = open_store()
    rid = take_in(store, 1).id
    start, end = T0_MS - 2 * HOUR_MS, T0_MS - HOUR_MS
    with pytest.raises(ValueError, match="within"):
        store.transition(
            rid, {"pending"}, "approved", approved_start_ms=start - 1, approved_end_ms=end
        )
    with pytest.raises(ValueError, match="within"):
        store.transition(rid, {"pending"}, "approved", approved_start_ms=start + 10)
    assert store.get(rid).state == "pending"  # type: ignore[union-attr]
    assert store.transition(
        rid, {"pending"}, "approved", approved_start_ms=start + 60_000, approved_end_ms=end
    )
    record = store.get(rid)
    assert record is not None and record.approved_start_ms == start + 60_000


def test_concurrent_decisions_from_many_connections_one_wins(
    open_store, tmp_path: Path, clock: ManualClock
) -> None:
    store = open_store()
    ids = [take_in(store, n).id for n in range(10)]
    deciders = [RequestStore(tmp_path / "data", clock) for _ in range(6)]
    barrier = threading.Barrier(len(deciders))
    wins: dict[int, list[str]] = {rid: [] for rid in ids}
    lock = threading.Lock()

    def decide(index: int) -> None:
        decision = "approved" if index % 2 else "denied"
        barrier.wait(timeout=10)
        for rid in ids:
            if deciders[index].transition(rid, {"pending"}, decision, decided_by=f"t{index}"):
                with lock:
                    wins[rid].append(f"t{index}")

    threads = [threading.Thread(target=decide, args=(i,), name=f"decider-{i}") for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for decider in deciders:
        decider.close()
    for rid in ids:
        assert len(wins[rid]) == 1, wins
        record = store.get(rid)
        assert record is not None and record.decided_by == wins[rid][0]
        assert record.state == ("approved" if int(wins[rid][0][1:]) % 2 else "denied")


_DECIDER = """
import json, sys
from edge.clock import SystemClock
from edge.share.store import RequestStore
data_dir, decision, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
store = RequestStore(data_dir, SystemClock())
print("ready", flush=True)
sys.stdin.readline()  # "go": every process starts at once
won = [rid for rid in ids if store.transition(rid, {"pending"}, decision, decision_channel="cli")]
print(json.dumps(won), flush=True)
"""


def test_concurrent_decisions_from_several_processes_one_wins(open_store, tmp_path: Path) -> None:
    store = open_store()
    ids = [take_in(store, n).id for n in range(40)]
    decisions = ["approved", "denied", "approved", "denied"]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _DECIDER, str(tmp_path / "data"), decision, json.dumps(ids)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        for decision in decisions
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        won = []
        for child in children:
            out, _ = child.communicate(timeout=60)
            assert child.returncode == 0
            won.append(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    all_wins = sorted(rid for w in won for rid in w)
    assert all_wins == sorted(ids)  # every request decided exactly once
    for decision, w in zip(decisions, won, strict=True):
        for rid in w:
            assert store.get(rid).state == decision  # type: ignore[union-attr]


_CLI_DENY = """
import sys
from edge.clock import SystemClock
from edge.share.store import RequestStore
with RequestStore(sys.argv[1], SystemClock()) as store:
    ok = store.transition(int(sys.argv[2]), {"pending"}, "denied", decision_channel="cli")
sys.exit(0 if ok else 1)
"""


def test_a_decision_made_in_another_process_is_seen(open_store, tmp_path: Path) -> None:
    daemon_store = open_store()
    rid = take_in(daemon_store, 1).id
    take_in(daemon_store, 2)
    rev = daemon_store.current_rev()
    done = subprocess.run(
        [sys.executable, "-c", _CLI_DENY, str(tmp_path / "data"), str(rid)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    new_rev, changed = daemon_store.changes_since(rev)
    assert [(r.id, r.state, r.decision_channel) for r in changed] == [(rid, "denied", "cli")]
    assert new_rev > rev and daemon_store.changes_since(new_rev)[1] == []


def test_a_writer_waits_for_another_instead_of_failing(
    open_store, tmp_path: Path, clock: ManualClock
) -> None:
    store = open_store()
    rid = take_in(store, 1).id
    impatient = open_store(busy_timeout_s=0.1)
    holder = sqlite3.connect(tmp_path / "data" / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write
    with pytest.raises(StoreError, match="unavailable"):
        impatient.transition(rid, {"pending"}, "denied")  # a clear error, not a traceback

    result: list[bool] = []
    patient = threading.Thread(
        target=lambda: result.append(store.transition(rid, {"pending"}, "approved")),
        name="patient-writer",
    )
    patient.start()
    holder.execute("COMMIT")  # whenever it lands, the waiting writer proceeds
    patient.join(timeout=30)
    holder.close()
    assert result == [True]


# ------------------------------------------------------------------ expiry, replay, caps


def test_sweep_expires_pending_past_exp_or_deadline(open_store, clock: ManualClock) -> None:
    store = open_store()
    by_exp = take_in(store, 1, exp_ms=T0_MS + HOUR_MS).id
    by_deadline = take_in(store, 2, decide_by_ms=T0_MS + 2 * HOUR_MS).id
    later = take_in(store, 3).id
    approved = take_in(store, 4, exp_ms=T0_MS + HOUR_MS).id
    assert store.transition(approved, {"pending"}, "approved")

    assert store.sweep_expired(T0_MS + HOUR_MS - 1) == []
    assert store.sweep_expired(T0_MS + HOUR_MS) == [by_exp]  # exp is strict: exp <= now
    assert store.sweep_expired(T0_MS + 3 * HOUR_MS) == [by_deadline]
    assert store.sweep_expired(T0_MS + 3 * HOUR_MS) == []
    reasons = {rid: store.get(rid).reason for rid in (by_exp, by_deadline)}  # type: ignore[union-attr]
    assert reasons == {by_exp: "exp", by_deadline: "decision_timeout"}
    assert store.get(later).state == "pending"  # type: ignore[union-attr]
    assert store.get(approved).state == "approved"  # type: ignore[union-attr]
    assert not store.transition(by_exp, {"pending"}, "approved")  # too late


def test_two_sweepers_expire_each_request_once(open_store, tmp_path, clock) -> None:
    store = open_store()
    ids = [take_in(store, n, exp_ms=T0_MS + HOUR_MS).id for n in range(30)]
    other = open_store()
    swept: list[list[int]] = []
    barrier = threading.Barrier(2)

    def sweep(s: RequestStore) -> None:
        barrier.wait(timeout=10)
        swept.append(s.sweep_expired(T0_MS + HOUR_MS))

    threads = [threading.Thread(target=sweep, args=(s,), name="sweeper") for s in (store, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(swept[0] + swept[1]) == ids


def test_replay_entries_are_pruned_only_well_after_exp(open_store) -> None:
    store = open_store()
    take_in(store, 1, exp_ms=T0_MS + HOUR_MS)
    take_in(store, 2, exp_ms=T0_MS + 48 * HOUR_MS)
    jti1 = "00000000-0000-4000-8000-000000000001"
    margin_ms = 24 * HOUR_MS
    assert store.prune_replay(T0_MS + HOUR_MS + margin_ms, margin_ms) == 0
    assert store.seen(ISS, jti1)
    assert store.prune_replay(T0_MS + HOUR_MS + margin_ms + 1, margin_ms) == 1
    assert not store.seen(ISS, jti1)  # the verifier now rejects it as expired anyway
    assert store.seen(ISS, "00000000-0000-4000-8000-000000000002")
    assert store.get(1) is not None  # the request itself is kept


def test_rejected_rows_are_capped_oldest_dropped(open_store, tmp_path: Path, clock) -> None:
    store = open_store(max_rejected=50)
    kept = take_in(store, 1).id
    ids = store.reject_many(Rejection("bad_alg", T0_MS + i) for i in range(100))
    ids += [store.reject(Rejection("too_large", T0_MS + 100 + i)) for i in range(20)]
    rejected = [r["id"] for r in store.list(all=True) if r["state"] == "rejected"]
    assert rejected == ids[-50:]
    assert store.get(kept) is not None  # only rejected rows are dropped
    assert store.counts()["rejected"] == 50
    store.close()

    smaller = RequestStore(tmp_path / "data", clock, max_rejected=10)
    try:
        assert [r.id for r in smaller.in_states(["rejected"])] == ids[-10:]
        new = smaller.reject(Rejection("bad_alg", T0_MS))
        assert new > max(ids)  # ids are never reused, even after rows are dropped
    finally:
        smaller.close()


def test_a_newer_schema_is_refused_clearly(tmp_path: Path, clock: ManualClock) -> None:
    RequestStore(tmp_path / "data", clock).close()
    with sqlite3.connect(tmp_path / "data" / DB_NAME) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        RequestStore(tmp_path / "data", clock)
