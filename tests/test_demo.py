"""`edge demo`, the README's first command, tells the whole story and checks it."""

from conftest import run_edge


def test_demo_runs_the_whole_story_and_every_check_passes() -> None:
    result = run_edge("demo", "--seconds", "6", timeout_s=240)
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    assert "FAILED" not in output
    for check in (
        "[ok] manifest signature verifies under the camera's key",
        "[ok] clip SHA-256 matches the manifest",
        "[ok] nothing at all was sent for the denied request",
        "[ok] every frame's time strip lies in the approved window",
        "audit log OK",
    ):
        assert check in output
