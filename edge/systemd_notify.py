"""sd_notify without a dependency: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

Every call is a no-op when ``NOTIFY_SOCKET`` is not set (not under systemd).
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s: float | None = None
        if watchdog_usec.isdigit() and int(watchdog_usec):
            self.watchdog_interval_s = int(watchdog_usec) / 2_000_000  # ping at half the limit

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        if not self._address:
            return
        message = "\n".join(lines).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message, self._address)
            except OSError:
                pass  # systemd gone or socket unreachable: nothing useful to do about it

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
