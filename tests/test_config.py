"""The config loader: defaults, every kind of mistake, and the one-line errors the CLI shows."""

from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_edge
from edge.config import ConfigError, load_config, parse_config


def test_documented_example_loads_with_every_default() -> None:
    example = load_config(REPO_ROOT / "config" / "edge.toml")
    defaults = parse_config("")
    # The example documents the defaults; only the location differs (it is an example).
    assert example.camera == defaults.camera
    assert example.buffer == defaults.buffer
    assert example.mqtt == defaults.mqtt
    assert example.policy == defaults.policy
    assert example.notify == defaults.notify
    assert example.review == defaults.review
    assert example.upload == defaults.upload
    assert example.keys == defaults.keys
    assert example.device.latitude == pytest.approx(47.6062)


def test_values_are_parsed_with_units() -> None:
    config = parse_config(
        '[buffer]\nmax_bytes = "500MB"\nmax_age = "2d"\n[policy]\nmax_window = "90m"\n'
        "max_radius_m = 300\n[camera]\nwidth = 320\nheight = 180\n"
    )
    assert config.buffer.max_bytes == 500_000_000
    assert config.buffer.max_age_s == 2 * 86400
    assert config.buffer.effective_pin_cap_bytes == 125_000_000
    assert config.policy.max_window_s == 5400
    assert config.policy.max_radius_m == 300
    assert (config.camera.width, config.camera.height) == (320, 180)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[camera]\nwidht = 640\n", "unknown key camera.widht"),
        ("[cameras]\nwidth = 640\n", "unknown section [cameras]"),
        ("[camera]\nfps = 0\n", "camera.fps: 0 is out of range"),
        ('[camera]\nfps = "30"\n', "camera.fps: expected a whole number, got a string"),
        ('[camera]\nsource = "webcam"\n', "camera.source: 'webcam' is not one of"),
        ("[camera]\nwidth = 321\n", "must be even"),
        ('[buffer]\nmax_bytes = "8 gigs"\n', "buffer.max_bytes: '8 gigs' is not a size"),
        ('[buffer]\nmax_bytes = "1MB"\n', "buffer.max_bytes: '1MB' is out of range"),
        ('[buffer]\nmax_age = "forever"\n', "buffer.max_age: 'forever' is not a duration"),
        ("[buffer]\nsegment_seconds = 60\n", "buffer.segment_seconds: 60 is out of range"),
        ("[device]\nlatitude = 91\nlongitude = 0\n", "device.latitude: 91 is out of range"),
        ("[device]\nlatitude = 47.6\n", "must be set together"),
        ('[device]\ntimezone = "Mars/Olympus"\n', "device.timezone"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: 70000 is out of range"),
        ("[mqtt]\ngeohash_precision = 9\n", "mqtt.geohash_precision: 9 is out of range"),
        ('[mqtt]\npassword_file = "/x"\n', "mqtt.username is empty"),
        ('[mqtt]\ntopic_prefix = "a/b"\n', "mqtt.topic_prefix"),
        ('[trust]\nplatform_keys = ["nope"]\n', "trust.platform_keys: item 0"),
        ('[trust]\nplatform_keys = "abc"\n', "trust.platform_keys: expected a list"),
        ('[keys]\nowner_recipients = ["age1xyz"]\n', "keys.owner_recipients: item 0"),
        ('[notify]\nntfy_url = "ftp://x/y"\n', "notify.ntfy_url"),
        ('[notify]\nntfy_url = "https://ntfy.sh"\n', "must name a server and a topic"),
        ('[notify]\nconsole = "yes"\n', "notify.console: expected true or false"),
        ('[review]\nlisten = "8420"\n', "review.listen"),
        ("[upload]\nallow_insecure_localhost = 1\n", "upload.allow_insecure_localhost"),
        ("[camera\n", "not valid TOML"),
        ("camera = 3\n", "[camera] must be a table"),
    ],
)
def test_each_mistake_is_named(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(toml)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_valid_keys_and_recipients_are_accepted() -> None:
    config = parse_config(
        '[trust]\nplatform_keys = ["rSUxmIelKtyxju-IxbmmyiphGI5OsbCJ6f-TL4-FkGc"]\n'
        "[keys]\nowner_recipients = "
        '["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]\n'
    )
    assert len(config.trust.platform_keys[0]) == 32
    assert config.keys.owner_recipients[0].startswith("age1")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such config file"),
        ("directory", "is a directory"),
        ("binary", "not UTF-8"),
        ("huge", "larger than"),
        ("unknown", "unknown key device.colour"),
    ],
)
def test_cli_reports_config_mistakes_in_one_line_with_exit_2(
    tmp_path: Path, setup: str, message: str
) -> None:
    path = tmp_path / "edge.toml"
    if setup == "directory":
        path.mkdir()
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    elif setup == "huge":
        path.write_text("# " + "x" * 300_000)
    elif setup == "unknown":
        path.write_text('[device]\ncolour = "blue"\n')
    result = run_edge("--config", str(path), "status")
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert message in stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1


def test_config_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[camera]\nfps = 99\n")
    result = run_edge("status", env={"EDGE_CONFIG": str(path)})
    assert result.returncode == 2
    assert str(path) in result.stderr.decode()
