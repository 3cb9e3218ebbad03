"""The intake under a flood: every message judged, the cheap ones kept cheap."""

from __future__ import annotations

from pathlib import Path

from edge.clock import ManualClock
from edge.share.audit import AuditLog, verify
from edge.share.intake import REJECTIONS_STORED_PER_MINUTE, Intake, IntakeSettings
from edge.share.store import RequestStore
from edge.share.verify import Location, Policy
from signing import NOW_S, PLATFORM_KEY, circle, make_payload, trust_for

LOCATION = Location(lat=47.6062, lon=-122.3321)


class AllFootage:
    """Stands in for the ring's time index: footage of every window."""

    def footage_ms(self, start_ms: int, end_ms: int, *, synced_only: bool) -> int:
        return end_ms - start_ms


def test_flood_is_counted_not_stored_and_a_valid_request_still_gets_through(
    tmp_path: Path,
) -> None:
    clock = ManualClock(int(NOW_S * 1000))
    audit = AuditLog(tmp_path / "audit", clock, flood_threshold_per_min=10).open()
    store = RequestStore(tmp_path, clock)
    pending: list[int] = []
    intake = Intake(
        IntakeSettings(trust_for(PLATFORM_KEY), Policy(), LOCATION, 48 * 3600, False),
        store,
        audit,
        AllFootage(),
        clock,
        on_pending=pending.append,
    )
    for number in range(500):
        assert intake.handle("edge/v1/req/c", b"garbage %d" % number).state == "rejected"
    near_miss = make_payload(
        location=LOCATION, request_overrides={"area": circle(47.64, -122.33, 300)}
    )
    assert intake.handle("edge/v1/req/c", near_miss).state == "not_matching"
    valid = make_payload(location=LOCATION)
    outcome = intake.handle("edge/v1/req/c", valid)
    assert outcome.state == "pending" and pending == [outcome.request_id]
    assert intake.handle("edge/v1/req/c/2", valid).state == "duplicate"  # another topic
    counts = store.counts()
    assert counts["rejected"] == REJECTIONS_STORED_PER_MINUTE
    assert counts["not_matching"] == 1 and counts["pending"] == 1
    audit.close()
    result = verify(tmp_path / "audit")
    assert result.ok
    text = (tmp_path / "audit" / "audit.log").read_text()
    assert text.count('"event":"rejected"') == 10  # then counted, one line a minute
    assert '"event":"rejected_aggregate"' in text and '"count":490' in text
    assert text.count('"event":"pending"') == 1
