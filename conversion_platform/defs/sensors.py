"""Sensors: retrying failed platform syncs, and keeping the delivery report current.

`delivery_retry_sensor` reads the delivery log each minute and requests a run of one
destination's delivery asset (and the report) for each destination-hour whose next retry
is due (see `operations/retry_planner.py` for the schedule, dead letters and circuits).
`delivery_report_sensor` re-materialises the report of hours whose delivery failed: the
failed step stops the report downstream of it in that run.
"""

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import orjson

from conversion_platform.defs.delivery_assets import (
    CIRCUIT_CLOSED_CHECK,
    DELIVERY_GROUP,
    DELIVERY_KEY_PREFIX,
)
from conversion_platform.defs.partitions import hourly_partitions
from conversion_platform.defs.report_assets import DELIVERY_REPORT
from conversion_platform.defs.resources import OperationalDatabase, PlatformSettings
from conversion_platform.operations.retry_planner import plan_retries
from conversion_platform.operations.retry_policy import RetryPolicy

DELIVERY_RETRY_SENSOR = "delivery_retry_sensor"
DELIVERY_REPORT_SENSOR = "delivery_report_sensor"
TAG_DESTINATION = "conversion_platform/destination"
TAG_RETRY = "conversion_platform/retry"
TAG_REPORT_FOR_RUN = "conversion_platform/report_for_run"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

#: Runs that may still deliver: their hours are left alone by the retry sensor.
IN_PROGRESS_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

delivery_retry_job = dg.define_asset_job(
    "delivery_retry_job",
    selection=dg.AssetSelection.groups(DELIVERY_GROUP) | dg.AssetSelection.assets(DELIVERY_REPORT),
    partitions_def=hourly_partitions,
    description=(
        "Delivery of one destination-hour again, and its report: what the retry sensor runs "
        "(each run selects one destination)."
    ),
)

delivery_report_job = dg.define_asset_job(
    "delivery_report_job",
    selection=dg.AssetSelection.assets(DELIVERY_REPORT),
    partitions_def=hourly_partitions,
    description="The delivery report of hours whose delivery step failed.",
)


def partition_key_for(hour: datetime) -> str:
    return hourly_partitions.get_partition_key_for_timestamp(hour.timestamp())


def partitions_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Hour partition keys of runs queued or in progress (single hours and ranges)."""
    keys: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS_STATUSES)):
        tags = run.tags
        if PARTITION_TAG in tags:
            keys.add(tags[PARTITION_TAG])
        elif RANGE_START_TAG in tags and RANGE_END_TAG in tags:
            keys.update(
                hourly_partitions.get_partition_keys_in_range(
                    dg.PartitionKeyRange(tags[RANGE_START_TAG], tags[RANGE_END_TAG])
                )
            )
    return keys


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_delivery_retry_sensor(
    *, clock: Callable[[], datetime] = _utc_now, policy: RetryPolicy | None = None
) -> dg.SensorDefinition:
    """The retry sensor; `clock` and `policy` are injectable (tests freeze the clock)."""

    @dg.sensor(
        name=DELIVERY_RETRY_SENSOR,
        job=delivery_retry_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Retries failed platform syncs: for each destination-hour with undelivered events "
            "in the delivery log, requests a run of that destination's delivery asset (and the "
            "delivery report) when its next retry is due - 1 min, 5 min, 30 min, 2 h, 6 h after "
            "each failure, then every 6 h until 72 h, honouring Retry-After - then dead-letters "
            "what is left. Permanent rejections are dead-lettered at once; an auth failure opens "
            "the destination's circuit until its credentials change or an operator resets it."
        ),
    )
    def delivery_retry_sensor(
        context: dg.SensorEvaluationContext,
        database: OperationalDatabase,
        platform: PlatformSettings,
    ) -> dg.SensorResult:
        now = clock()
        configs = platform.destinations()
        plan = plan_retries(
            database.engine(),
            configs,
            policy or RetryPolicy.from_env(),
            now,
            partition_key_for=partition_key_for,
            busy_partitions=partitions_in_flight(context.instance),
        )
        run_requests = [
            dg.RunRequest(
                run_key=request.run_key,
                partition_key=request.partition_key,
                asset_selection=[
                    dg.AssetKey([DELIVERY_KEY_PREFIX, request.destination]),
                    dg.AssetKey(DELIVERY_REPORT),
                ],
                tags={
                    TAG_DESTINATION: request.destination,
                    TAG_RETRY: str(request.retry_number),
                },
            )
            for request in plan.requests
        ]
        # The circuit check shows the change at once, not only at the destination's next run.
        checks = [
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey([DELIVERY_KEY_PREFIX, change.destination]),
                check_name=CIRCUIT_CLOSED_CHECK,
                passed=not change.opened,
                metadata={"reason": dg.MetadataValue.text(change.reason)},
            )
            for change in plan.circuit_changes
        ]
        description = plan.describe()
        context.log.info(description)
        cursor = orjson.dumps(
            {
                "evaluated_at": now.isoformat(),
                "requested": len(plan.requests),
                "waiting": len(plan.waiting),
                "held": len(plan.held),
                "dead_lettered": len(plan.dead_lettered),
            }
        ).decode()
        return dg.SensorResult(
            run_requests=run_requests,
            skip_reason=None if run_requests else description,
            cursor=cursor,
            asset_events=checks,
        )

    return delivery_retry_sensor


def _failed_delivery_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        entry.step_key
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if entry.step_key and entry.step_key.startswith(f"{DELIVERY_KEY_PREFIX}__")
    ]


@dg.run_status_sensor(
    name=DELIVERY_REPORT_SENSOR,
    run_status=dg.DagsterRunStatus.FAILURE,
    request_job=delivery_report_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Keeps the delivery report current for hours whose delivery failed: when a run's "
        "delivery step fails (so the report downstream of it was skipped), requests the "
        "report of that run's hours."
    ),
)
def delivery_report_sensor(context: dg.RunStatusSensorContext):
    run = context.dagster_run
    if run.job_name == delivery_report_job.name:
        return dg.SkipReason("a report run failed; not reporting on it again")
    failed = _failed_delivery_steps(context.instance, run.run_id)
    if not failed:
        return dg.SkipReason(f"run {run.run_id[:8]} failed before or without a delivery step")
    tags = {TAG_REPORT_FOR_RUN: run.run_id}
    run_key = f"delivery_report:{run.run_id}"
    if PARTITION_TAG in run.tags:
        return dg.RunRequest(run_key=run_key, partition_key=run.tags[PARTITION_TAG], tags=tags)
    if RANGE_START_TAG in run.tags and RANGE_END_TAG in run.tags:
        return dg.RunRequest(
            run_key=run_key,
            tags={
                **tags,
                RANGE_START_TAG: run.tags[RANGE_START_TAG],
                RANGE_END_TAG: run.tags[RANGE_END_TAG],
            },
        )
    return dg.SkipReason(f"run {run.run_id[:8]} has no hour partitions")
