"""One delivery asset per enabled destination, built by one factory."""

import dagster as dg
import pandas as pd

from conversion_platform import events
from conversion_platform.defs.metadata import markdown_table
from conversion_platform.defs.partitions import hourly_partitions, hours_of_run, single_run
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.destinations.config import DestinationConfig
from conversion_platform.destinations.delivery import HourDeliverer, HourDelivery, columns_delivered
from conversion_platform.destinations.http_client import new_session
from conversion_platform.destinations.registry import destination_for
from conversion_platform.destinations.request_status import StatusPolling, resolve_pending_requests
from conversion_platform.operations.circuits import hold_reason
from conversion_platform.operations.dead_letters import dead_letter_rejected

DELIVERY_GROUP = "delivery"
DELIVERY_KEY_PREFIX = "delivery"
#: Fails while the destination's circuit is open after an auth failure (nothing is sent).
CIRCUIT_CLOSED_CHECK = "destination_circuit_closed"


class UndeliveredBatchesError(Exception):
    """Retryable batches of some hours are still undelivered after the in-run retries."""


def _figures(report: HourDelivery) -> dict[str, float | int]:
    return {
        "eligible": report.eligible,
        "sent": report.sent,
        "accepted": report.delivered + report.awaiting_status,
        "delivered": report.delivered,
        "awaiting_status": report.awaiting_status,
        "rejected": report.rejected_total,
        "expired": report.expired,
        "filtered": report.filtered,
        "pending": report.pending,
        "already_delivered": report.already_settled,
        "requests": report.requests,
        "mean_match_quality": round(report.mean_match_quality or 0.0, 3),
    }


def _status_figures(before: StatusPolling, after: StatusPolling) -> dict[str, int]:
    """Per-event outcomes the platform reported later, for requests of this or earlier runs."""
    return {
        "status_requests_resolved": before.resolved + after.resolved,
        "status_events_delivered": before.events_delivered + after.events_delivered,
        "status_events_rejected": before.events_rejected + after.events_rejected,
        "status_events_unconfirmed": before.events_unconfirmed + after.events_unconfirmed,
        "status_requests_processing": after.processing,
    }


def build_delivery_asset(config: DestinationConfig) -> dg.AssetsDefinition:
    """The partitioned delivery asset `delivery/<name>` for one configured destination."""
    destination = destination_for(config.platform, config.settings)
    # The hour is read with the columns its delivery reads (all when it does not say).
    columns = columns_delivered(destination)
    resolved = dg.AssetIn(
        "resolved_conversions",
        metadata={"columns": sorted(columns | {events.HOUR_COLUMN})} if columns else None,
    )

    @dg.asset(
        name=config.name,
        key_prefix=[DELIVERY_KEY_PREFIX],
        partitions_def=hourly_partitions,
        backfill_policy=single_run,
        group_name=DELIVERY_GROUP,
        kinds={"python"},
        pool=f"destination_{config.name}",
        ins={"resolved_conversions": resolved},
        check_specs=[
            dg.AssetCheckSpec(
                CIRCUIT_CLOSED_CHECK,
                asset=dg.AssetKey([DELIVERY_KEY_PREFIX, config.name]),
                description=(
                    "Fails while an auth failure keeps the destination's circuit open: nothing "
                    "is sent until its credentials change or an operator runs "
                    f"`conversion-platform circuit reset --destination {config.name}`."
                ),
            )
        ],
        description=(
            f"Conversions of the hour delivered to {config.name} ({destination.platform}): "
            "each event mapped to the platform's format, batched at its limit, and every "
            "batch's outcome recorded in the delivery log. In dry-run mode (the default "
            "without credentials) the exact request bodies go to the outbox."
        ),
        code_version="1",
    )
    def _delivery(
        context: dg.AssetExecutionContext,
        database: OperationalDatabase,
        platform: PlatformSettings,
        resolved_conversions: pd.DataFrame,
    ) -> dg.MaterializeResult:
        engine = database.engine()
        session = new_session()
        # Outcomes the platform reports later (Google) for requests of earlier runs.
        polled_before = resolve_pending_requests(engine, destination, config, session)
        deliverer = HourDeliverer(
            engine,
            destination,
            config,
            session,
            platform.outbox_dir,
            consent_required=platform.consent_required,
            run_id=context.run_id,
            hold_reason=hold_reason(engine, config),
        )
        by_hour = events.frames_by_hour(resolved_conversions)
        reports: list[tuple[str, HourDelivery]] = []
        hours = hours_of_run(context)
        # Each hour is delivered and recorded on its own: one hour's failure never stops the next.
        for key, hour in hours:
            frame = by_hour.get(pd.Timestamp(hour), resolved_conversions.iloc[0:0])
            report = deliverer.deliver_hour(frame, hour, key)
            # Permanent rejections go to the dead letters at once, with the platform's reason.
            dead_letter_rejected(engine, config.name, [hour])
            # An auth failure opens the circuit: the range's later hours are held, not sent.
            deliverer.hold_reason = hold_reason(engine, config)
            reports.append((key, report))
            if len(hours) > 1:
                context.log_event(
                    dg.AssetObservation(
                        asset_key=context.asset_key, partition=key, metadata=_figures(report)
                    )
                )
        polled_after = resolve_pending_requests(engine, destination, config, session)
        session.close()
        totals: dict[str, float] = {}
        for _, report in reports:
            for name, value in _figures(report).items():
                totals[name] = totals.get(name, 0) + value
        if reports:
            sent = sum(r.sent for _, r in reports)
            totals["mean_match_quality"] = (
                round(sum(r.match_quality_sum for _, r in reports) / sent, 3) if sent else 0.0
            )
        rejected_reasons = {}
        for _, report in reports:
            for reason, n in report.rejected.items():
                rejected_reasons[reason] = rejected_reasons.get(reason, 0) + n
        metadata: dict[str, object] = {
            **{k: (float(v) if isinstance(v, float) else int(v)) for k, v in totals.items()},
            "mode": reports[0][1].mode if reports else config.effective_mode(),
            "platform": destination.platform,
            "per_hour": dg.MetadataValue.md(
                markdown_table([{"hour": k, **_figures(r)} for k, r in reports])
            ),
            "rejected_by_reason": dg.MetadataValue.md(
                markdown_table(
                    [
                        {"reason": r, "events": n}
                        for r, n in sorted(rejected_reasons.items(), key=lambda x: -x[1])
                    ]
                )
            ),
        }
        if destination.reports_status_later:
            metadata.update(_status_figures(polled_before, polled_after))
        outbox = [r.outbox_file for _, r in reports if r.outbox_file]
        if outbox:
            metadata["outbox"] = dg.MetadataValue.path(outbox[-1])
        held = deliverer.hold_reason
        metadata["circuit"] = "open" if held else "closed"
        circuit_check = dg.AssetCheckResult(
            check_name=CIRCUIT_CLOSED_CHECK,
            passed=held is None,
            metadata={"reason": held or "closed"},
        )
        failed = [(k, r) for k, r in reports if r.pending]
        if failed:
            context.log.error(
                f"{config.name}: {sum(r.pending for _, r in failed)} events of {len(failed)} hour(s) "
                "still undelivered after in-run retries; "
                + (held if held else "the retry sensor will try again")
            )
            # The step fails, so the check result is logged on its own before raising.
            context.log_event(
                dg.AssetCheckEvaluation(
                    asset_key=context.asset_key,
                    check_name=CIRCUIT_CLOSED_CHECK,
                    passed=held is None,
                    metadata={"reason": dg.MetadataValue.text(held or "closed")},
                )
            )
            raise UndeliveredBatchesError(
                f"{config.name}: retryable batches undelivered for hours {[k for k, _ in failed]}"
                + (f" ({held})" if held else "")
            )
        return dg.MaterializeResult(metadata=metadata, check_results=[circuit_check])

    return _delivery


def build_delivery_assets(configs: list[DestinationConfig]) -> list[dg.AssetsDefinition]:
    return [build_delivery_asset(c) for c in configs]
