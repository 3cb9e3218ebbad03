"""The device key store: real files, real modes, the real `age` tool.

The only stand-in is the clock (ManualClock), to make a day pass.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from pyrage import x25519

from edge.clock import ManualClock
from edge.keys import (
    SIGNING_KEY_NAME,
    KeyFileError,
    KeyPermissionError,
    KeyStore,
    check_permissions,
    init_keys,
    load_signing_key,
    parse_recipients,
)
from ringtools import T0_MS

DAY_MS = 86_400_000


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_keys_0600_in_a_0700_dir(tmp_path: Path) -> None:
    keys_dir = tmp_path / "data" / "keys"
    old_umask = os.umask(0o022)  # a common umask must not loosen anything
    try:
        created = init_keys(keys_dir, now_ms=T0_MS)
    finally:
        os.umask(old_umask)
    names = sorted(path.name for path in created)
    assert names[0] == "device-ed25519.key" and names[1] == "device-ed25519.pub"
    assert names[2].startswith("storage-20260921T") and names[2].endswith(".agekey")
    assert mode_of(keys_dir) == 0o700
    for path in created:
        assert mode_of(path) == (0o644 if path.suffix == ".pub" else 0o600), path
    assert not [p for p in keys_dir.iterdir() if p.name.startswith(".tmp")]
    check_permissions(keys_dir)  # passes on what init made


def test_init_never_overwrites(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, now_ms=T0_MS)
    before = {path.name: path.read_bytes() for path in keys_dir.iterdir()}
    assert init_keys(keys_dir, now_ms=T0_MS + 5 * DAY_MS) == []
    assert {path.name: path.read_bytes() for path in keys_dir.iterdir()} == before


def test_init_keeps_an_existing_signing_key_and_adds_only_what_is_missing(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, now_ms=T0_MS)
    signing = (keys_dir / SIGNING_KEY_NAME).read_bytes()
    for path in keys_dir.glob("storage-*.agekey"):
        path.unlink()
    (keys_dir / "device-ed25519.pub").unlink()
    created = init_keys(keys_dir, now_ms=T0_MS)
    assert sorted(p.suffix for p in created) == [".agekey", ".pub"]
    assert (keys_dir / SIGNING_KEY_NAME).read_bytes() == signing
    load_signing_key(keys_dir).sign(b"manifest")  # loads and works


def test_check_permissions_names_the_file_and_the_fix(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, now_ms=T0_MS)
    storage = next(keys_dir.glob("storage-*.agekey"))
    os.chmod(storage, 0o640)
    with pytest.raises(KeyPermissionError) as raised:
        check_permissions(keys_dir)
    assert str(storage) in str(raised.value)
    assert f"chmod 600 {storage}" in str(raised.value)
    os.chmod(storage, 0o600)
    os.chmod(keys_dir / SIGNING_KEY_NAME, 0o604)  # readable by others only
    with pytest.raises(KeyPermissionError, match=r"device-ed25519\.key"):
        check_permissions(keys_dir)
    os.chmod(keys_dir / SIGNING_KEY_NAME, 0o600)
    os.chmod(keys_dir, 0o777)
    with pytest.raises(KeyPermissionError, match=f"chmod 700 {keys_dir}"):
        check_permissions(keys_dir)
    os.chmod(keys_dir, 0o700)
    check_permissions(keys_dir)


def test_check_permissions_on_a_missing_dir_says_how_to_make_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="edge keys init"):
        check_permissions(tmp_path / "nowhere")


def test_storage_identity_files_work_with_the_age_tool(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, now_ms=T0_MS)
    store = KeyStore(keys_dir)
    key = store.current(ManualClock(T0_MS))
    sealed = subprocess.run(
        ["age", "-r", str(key.recipient)], input=b"hello", capture_output=True, check=True
    ).stdout
    identity_file = next(keys_dir.glob("storage-*.agekey"))
    opened = subprocess.run(
        ["age", "-d", "-i", str(identity_file)], input=sealed, capture_output=True, check=True
    )
    assert opened.stdout == b"hello"


def test_rotation_daily_on_the_monotonic_clock(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    clock = ManualClock(T0_MS)
    init_keys(keys_dir, now_ms=clock.now_ms())
    store = KeyStore(keys_dir, rotate_every_s=86400)
    first = store.current(clock)
    clock.advance_ms(DAY_MS - 1000)
    assert store.current(clock).key_id == first.key_id
    # NTP stepping the wall clock a week forward does not rotate by itself...
    clock.jump_wall_ms(7 * DAY_MS)
    assert store.current(clock).key_id == first.key_id
    # ...a day of running does.
    clock.advance_ms(1000)
    second = store.current(clock)
    assert second.key_id != first.key_id
    assert sorted(store.key_ids()) == sorted([first.key_id, second.key_id])
    assert mode_of(keys_dir / f"storage-{second.key_id}.agekey") == 0o600


def test_a_restart_after_a_day_rotates_at_once(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, now_ms=T0_MS)
    first_id = KeyStore(keys_dir).key_ids()[0]
    later = ManualClock(T0_MS + DAY_MS + 1)
    assert KeyStore(keys_dir).current(later).key_id != first_id


def test_delete_unused_keeps_current_and_those_in_use(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    clock = ManualClock(T0_MS)
    init_keys(keys_dir, now_ms=clock.now_ms())
    store = KeyStore(keys_dir, rotate_every_s=60)
    ids = []
    for _ in range(3):
        ids.append(store.current(clock).key_id)
        clock.advance_ms(61_000)
    current = store.current(clock).key_id
    deleted = store.delete_unused({ids[1]})
    assert sorted(deleted) == sorted([ids[0], ids[2]])
    assert sorted(store.key_ids()) == sorted([ids[1], current])
    with pytest.raises(KeyFileError):
        store.identity(ids[0])


def test_owner_recipients_are_validated_with_a_clear_message() -> None:
    good = str(x25519.Identity.generate().to_public())
    assert len(parse_recipients([good])) == 1
    with pytest.raises(ValueError, match="age1nope"):
        parse_recipients([good, "age1nope"])


def test_a_garbage_key_file_is_reported_not_crashed_on(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, now_ms=T0_MS)
    path = next(keys_dir.glob("storage-*.agekey"))
    key_id = path.name[len("storage-") : -len(".agekey")]
    path.write_bytes(b"AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(KeyFileError, match="not hold a valid age X25519 identity"):
        KeyStore(keys_dir).identity(key_id)
    path.write_bytes(b"x" * 10_000)
    with pytest.raises(KeyFileError, match="too large"):
        KeyStore(keys_dir).identity(key_id)
