"""The `edge` command: parses arguments, loads the config, hands over, reports errors.

Kept thin on purpose: the work is done by the composition root (edge.daemon) and
edge.commands. Every mistake a user can make ends here as one line on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.config import Config, ConfigError, load_config
from edge.daemon import StartupError

EXIT_FAILURE = 1
EXIT_USAGE = 2

# Options whose value may be a relative time such as "-10m", which argparse would
# otherwise take for an option of its own.
_TIME_OPTIONS = ("--start", "--end", "--now")
_RELATIVE_TIME_RE = re.compile(r"^-\d+(\.\d+)?[smhdw]$")


class UserError(Exception):
    """A mistake or a missing precondition the user can fix; printed as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, as every other error; the usage is one `--help` away.
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)", EXIT_USAGE)


def _join_relative_times(argv: Sequence[str]) -> list[str]:
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if (
            arg in _TIME_OPTIONS
            and index + 1 < len(argv)
            and _RELATIVE_TIME_RE.match(argv[index + 1])
        ):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge", description="Doorbell camera daemon with owner-approved sharing.")
    parser.add_argument(
        "--config", type=Path, help="config file (default $EDGE_CONFIG, then /etc/edge/edge.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser("run", help="the daemon, in the foreground")
    run.add_argument("--duration", type=float, metavar="S", help="stop cleanly after S seconds")

    status = commands.add_parser("status", help="buffer, links and pending requests")
    status.add_argument("--json", action="store_true", help="one JSON object")

    export = commands.add_parser("export", help="footage of a window as an MP4 (no re-encode)")
    export.add_argument("--start", required=True, metavar="T")
    export.add_argument("--end", required=True, metavar="T")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="FILE")

    request = commands.add_parser("request", help="tools for assistance requests")
    request_commands = request.add_subparsers(
        dest="request_command", metavar="SUBCOMMAND", parser_class=_Parser
    )
    request_commands.required = True
    check = request_commands.add_parser("check", help="judge one payload as the daemon would")
    check.add_argument("--now", metavar="T", help="judge at this time (default now)")
    check.add_argument("file", nargs="?", type=Path, help="payload file (default stdin)")

    requests = commands.add_parser("requests", help="requests taken in and their state")
    requests.add_argument("--json", action="store_true")
    requests.add_argument("--all", action="store_true", help="include rejected and not matching")

    approve = commands.add_parser("approve", help="approve a pending request (as the owner)")
    approve.add_argument("id")
    approve.add_argument("--start", metavar="T", help="narrow the window: share from T")
    approve.add_argument("--end", metavar="T", help="narrow the window: share until T")
    approve.add_argument("--sha256", metavar="H", help="the clip must be exactly this one")

    deny = commands.add_parser("deny", help="deny a pending request")
    deny.add_argument("id")

    keys = commands.add_parser("keys", help="the device's keys")
    key_commands = keys.add_subparsers(
        dest="keys_command", metavar="SUBCOMMAND", parser_class=_Parser
    )
    key_commands.required = True
    key_commands.add_parser("init", help="make the device's keys; never overwrites one")

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(
        dest="audit_command", metavar="SUBCOMMAND", parser_class=_Parser
    )
    audit_commands.required = True
    verify = audit_commands.add_parser("verify", help="check the audit log end to end")
    verify.add_argument(
        "--head", metavar="H", help="also check that this head (from a prompt) is in the log"
    )

    demo = commands.add_parser("demo", help="the whole story on one machine, no hardware")
    demo.add_argument(
        "--dir", type=Path, help="where the demo keeps its files (default: a temporary folder)"
    )
    demo.add_argument(
        "--seconds", type=float, default=20.0, help="how long to record before the request"
    )
    return parser


def drop_privileges_to_owner_of(data_dir: Path) -> None:
    """Started as root, become the user owning ``data_dir`` so no file ends up owned by root."""
    if os.geteuid() != 0:
        return
    try:
        info = data_dir.stat()
    except FileNotFoundError:
        return  # nothing there yet: whoever creates it owns it
    if info.st_uid == 0:
        return
    import pwd

    try:
        user = pwd.getpwuid(info.st_uid)
    except KeyError:
        raise UserError(
            f"{data_dir} belongs to uid {info.st_uid}, which has no user entry"
        ) from None
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir


_JOURNAL_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class _JournalPriority(logging.Filter):
    """Adds the syslog priority journald reads from a "<N>" line prefix (sd-daemon(3))."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.priority = _JOURNAL_PRIORITIES.get(record.levelno, 2)
        return True


def _configure_logging(verbose: bool) -> None:
    """One line per event: on a terminal with the time, under systemd with the priority
    journald files it under (journald adds the time), elsewhere with the level."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.addFilter(_JournalPriority())
        handler.setFormatter(logging.Formatter("<%(priority)d>%(name)s: %(message)s"))
    elif sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    drop_privileges_to_owner_of(config.device.data_dir)
    return config


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from edge.demo import run_demo

        return run_demo(work_dir=args.dir, record_seconds=args.seconds)
    if args.command == "request" and args.request_command == "check":
        # Judging a payload needs the trust settings but nothing on disk, so a
        # missing config is fine only when one was not asked for explicitly.
        from edge import commands

        return commands.request_check(_load(args), args.file, args.now)
    config = _load(args)
    if args.command == "run":
        from edge.daemon import run_daemon

        return run_daemon(config, duration_s=args.duration)
    from edge import commands

    handlers = {
        "status": lambda: commands.status(config, as_json=args.json),
        "export": lambda: commands.export(config, args.start, args.end, args.output),
        "requests": lambda: commands.list_requests(config, as_json=args.json, show_all=args.all),
        "approve": lambda: commands.approve(config, args.id, args.start, args.end, args.sha256),
        "deny": lambda: commands.deny(config, args.id),
        "keys": lambda: commands.keys_init(config),
        "audit": lambda: commands.audit_verify(config, args.head),
    }
    return handlers[args.command]()


def main(argv: Sequence[str] | None = None) -> int:
    raw_args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(_join_relative_times(raw_args))
        _configure_logging(args.verbose)
        return dispatch(args)
    except ConfigError as exc:
        print(f"edge: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"edge: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except UserError as exc:
        print(f"edge: {exc}" if not str(exc).startswith("edge") else str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
