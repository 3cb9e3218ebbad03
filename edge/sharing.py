"""The sharing side of the daemon, wired from the config: hear, ask, decide, deliver.

Part of the composition root (edge.daemon builds it after recording is up).
Every part is optional in the sense that a broker that is down, or a notifier
that fails, shows in the status and is retried; none of it can stop recording.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.buffer.ring import Ring
from edge.clock import Clock
from edge.config import Config
from edge.daemon import verifier_inputs
from edge.keys import load_signing_key
from edge.share.audit import AuditLog
from edge.share.consent import ConsentService, ConsentSettings
from edge.share.delivery import DeliverySettings, DeliveryWorker
from edge.share.footage import RingFootage
from edge.share.geohash import subscription_topics
from edge.share.intake import Intake, IntakeSettings
from edge.share.mqtt import IncomingMessage, RequestListener, load_or_create_client_id
from edge.share.notify import DeliveryReport, PromptDispatcher, build_notifiers
from edge.share.outbox import Outbox
from edge.share.prompt import system_time_zone_name
from edge.share.store import RequestStore
from edge.share.tokens import TokenStore
from edge.stopping import Step

if TYPE_CHECKING:
    from edge.share.review import ReviewServer

log = logging.getLogger(__name__)

CLIENT_ID_FILE = "mqtt-client-id"


def sharing_disabled_reason(config: Config) -> str | None:
    """Why the daemon only records (None: it listens for requests too)."""
    if not config.mqtt.host:
        return "mqtt.host is empty"
    if not config.location_known:
        return "device.latitude/longitude are not set"
    if not config.trust.platform_keys:
        return "trust.platform_keys is empty: no request could be trusted"
    return None


def review_base_url(config: Config) -> str:
    """Where the owner's phone reaches the review page: ``review.url``, or a guess
    from ``review.listen`` (this host's mDNS name). "" when the page is off."""
    review = config.review
    if not review.listen:
        return ""
    if review.url:
        return review.url.rstrip("/")
    host, _, port = review.listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = f"{socket.gethostname()}.local"
    scheme = "https" if review.tls_cert is not None else "http"
    return f"{scheme}://{host}:{port}"


@dataclass
class Sharing:
    audit: AuditLog
    store: RequestStore
    tokens: TokenStore
    outbox: Outbox
    dispatcher: PromptDispatcher
    consent: ConsentService
    delivery: DeliveryWorker
    intake: Intake
    listener: RequestListener
    review: ReviewServer | None
    notifier_names: list[str] = field(default_factory=list)
    notifier_health: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, config: Config, ring: Ring, clock: Clock) -> Sharing:
        trust, policy, known_location = verifier_inputs(config)
        assert known_location is not None  # sharing_disabled_reason checked it
        location = known_location
        data_dir = config.device.data_dir
        time_zone = config.device.timezone or system_time_zone_name()
        exclude_unsynced = config.policy.unsynced_footage == "exclude"
        footage = RingFootage(ring)
        audit = AuditLog(data_dir / "audit", clock).open()
        store = RequestStore(data_dir, clock)
        tokens = TokenStore(data_dir / "tokens.db")
        outbox = Outbox(data_dir / "outbox", config.keys_dir)

        notifier_health: dict[str, str] = {}  # written by edge-notify-* threads, read by status

        def on_report(report: DeliveryReport) -> None:  # runs on edge-notify-* threads
            notifier_health[report.notifier] = (
                "ok" if report.delivered else f"failing ({report.error or 'no answer'})"
            )
            if report.delivered:
                audit.append(
                    "notified", id=report.request_id, what=report.message, via=report.notifier
                )
            elif report.final:
                log.error(
                    "%s for request %s not delivered by %s: %s",
                    report.message,
                    report.request_id,
                    report.notifier,
                    report.error,
                )

        notifiers = build_notifiers(
            ntfy_url=config.notify.ntfy_url,
            ntfy_token_file=config.notify.ntfy_token_file,
            webhook_url=config.notify.webhook_url,
            console=config.notify.console,
        )
        if not notifiers:
            log.warning(
                "no notifier is enabled ([notify]): pending requests wait for `edge requests`"
            )
        dispatcher = PromptDispatcher(notifiers, clock=clock, on_report=on_report)
        delivery = DeliveryWorker(
            DeliverySettings(allow_insecure_localhost=config.upload.allow_insecure_localhost),
            store,
            outbox,
            audit,
            load_signing_key(config.keys_dir),
            clock,
        )
        consent = ConsentService(
            ConsentSettings(
                location=location,
                time_zone=time_zone,
                review_url=review_base_url(config),
                exclude_unsynced=exclude_unsynced,
            ),
            store,
            tokens,
            audit,
            footage,
            ring,
            outbox,
            dispatcher,
            clock,
        )
        intake = Intake(
            IntakeSettings(
                trust=trust,
                policy=policy,
                location=location,
                decision_timeout_s=config.policy.decision_timeout_s,
                exclude_unsynced=exclude_unsynced,
            ),
            store,
            audit,
            footage,
            clock,
            on_pending=consent.prompt,
        )

        def handle(messages: list[IncomingMessage]) -> None:
            intake.handle_batch([(message.topic, message.payload) for message in messages])

        mqtt = config.mqtt
        listener = RequestListener(
            mqtt.host,
            mqtt.port,
            client_id=mqtt.client_id or load_or_create_client_id(data_dir / CLIENT_ID_FILE),
            topics=subscription_topics(
                location.lat, location.lon, mqtt.geohash_precision, mqtt.topic_prefix
            ),
            batch_handler=handle,
            username=mqtt.username or None,
            password_file=mqtt.password_file,
            tls=mqtt.tls,
            tls_ca=mqtt.tls_ca,
            tls_cert=mqtt.tls_cert,
            tls_key=mqtt.tls_key,
        )
        review = None
        if config.review.listen:
            # Only here: the page's web framework (Flask, ~15 MB) is not loaded
            # while the review page is off, the default.
            from edge.share.review import ReviewServer

            review = ReviewServer(
                config.review.listen,
                consent,
                tokens,
                clock,
                tls_cert=config.review.tls_cert,
                tls_key=config.review.tls_key,
            )
        sharing = cls(
            audit, store, tokens, outbox, dispatcher, consent, delivery, intake, listener, review
        )
        sharing.notifier_names = [n.name for n in notifiers]
        sharing.notifier_health = notifier_health
        return sharing

    def start(self) -> None:
        self.dispatcher.start()
        self.consent.start()
        self.delivery.start()
        if self.review is not None:
            self.review.start()
        self.listener.start()

    def stop_steps(self) -> list[Step]:
        """How to stop, in order (for ``stop_in_order``, which goes on past a failure)."""
        # Inputs first (no new work), then the workers, then the records.
        steps: list[Step] = [("MQTT listener", self.listener.stop)]
        if self.review is not None:
            steps.append(("review page", self.review.stop))
        steps += [
            ("consent worker", self.consent.stop),
            ("delivery worker", self.delivery.stop),
            ("notifier", self.dispatcher.stop),
            ("review tokens", self.tokens.close),
            ("request store", self.store.close),
            ("audit log", self.audit.close),
        ]
        return steps

    def status(self) -> dict[str, Any]:
        link = self.listener.stats
        broker = "connected" if link.connected else f"not connected ({link.last_error or 'trying'})"
        parts = {
            "broker": broker + (f", {link.received} messages" if link.connected else ""),
            "requests": ", ".join(f"{n} {state}" for state, n in self.store.counts().items() if n)
            or "none yet",
        }
        parts["notify"] = ", ".join(
            f"{name} {self.notifier_health.get(name, 'idle')}" for name in self.notifier_names
        ) or "off (no notifier in [notify])"
        if self.review is not None:
            parts["review"] = f"serving on port {self.review.port}"
        if self.delivery.active_request is not None:
            parts["upload"] = f"delivering request {self.delivery.active_request}"
        return {
            "parts": parts,
            "broker": {
                "connected": link.connected,
                "subscribed": link.subscribed,
                "received": link.received,
                "dropped_oversize": link.dropped_oversize,
                "dropped_overflow": link.dropped_overflow,
                "last_error": link.last_error,
            },
        }
