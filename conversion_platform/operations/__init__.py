"""Operations: the retry schedule, dead letters, destination circuits and the delivery report.

Plain Python over the operational database, no Dagster import: the sensors, checks and
report asset in `defs/` call these.
"""
