"""The Dagster side of the platform: assets, checks, sensors, schedules and resources.

The project relies on two Dagster features still marked beta: `backfill_policy` (every
hourly asset backfills a range in one run) and `pandera_schema_to_dagster_type`. Their
warnings would be printed by every `dagster` command and every run's log, so they are
silenced here, before any asset is defined; other Dagster warnings still show.
"""

import warnings

from dagster import BetaWarning

warnings.filterwarnings("ignore", category=BetaWarning)
