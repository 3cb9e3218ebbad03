"""Single-use decision tokens, on a real SQLite file."""

import threading
from pathlib import Path

import pytest

from edge.share.tokens import TokenError, TokenStore


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.db")


def test_token_is_single_use_and_bound_to_its_purpose(store: TokenStore) -> None:
    review = store.issue("r1", "review", expires_ms=10_000)
    deny = store.issue("r1", "deny", expires_ms=10_000)
    assert store.peek(review, now_ms=1).request_id == "r1"
    assert store.peek(review, now_ms=2).purpose == "review"  # peeking spends nothing
    with pytest.raises(TokenError):
        store.spend(deny, now_ms=3, purpose="review")
    assert store.spend(review, now_ms=4, purpose="review").request_id == "r1"
    with pytest.raises(TokenError):
        store.spend(review, now_ms=5)
    with pytest.raises(TokenError):
        store.peek(review, now_ms=5)
    assert store.spend(deny, now_ms=6, purpose="deny").purpose == "deny"


def test_expired_forged_and_revoked_tokens_are_refused(store: TokenStore, tmp_path: Path) -> None:
    token = store.issue("r2", "review", expires_ms=1_000)
    with pytest.raises(TokenError):
        store.peek(token, now_ms=1_000)
    for forged in ["", "x" * 500, token[:-1] + ("A" if token[-1] != "A" else "B"), "é"]:
        with pytest.raises(TokenError):
            store.peek(forged, now_ms=0)
    other = store.issue("r3", "deny", expires_ms=5_000)
    store.revoke_request("r3")
    with pytest.raises(TokenError):
        store.spend(other, now_ms=0)
    # Only hashes are stored: the token's text is nowhere in the database file.
    raw = (tmp_path / "tokens.db").read_bytes() + (tmp_path / "tokens.db-wal").read_bytes()
    assert token.encode() not in raw


def test_concurrent_spends_let_exactly_one_win(tmp_path: Path) -> None:
    token = TokenStore(tmp_path / "t.db").issue("r4", "deny", expires_ms=10_000)
    stores = [TokenStore(tmp_path / "t.db") for _ in range(8)]  # as from several processes
    wins: list[int] = []
    start = threading.Barrier(len(stores))

    def attempt(index: int) -> None:
        start.wait()
        try:
            stores[index].spend(token, now_ms=1)
            wins.append(index)
        except TokenError:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
