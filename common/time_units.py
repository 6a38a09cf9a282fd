"""The units survival times may be stated in (site.json, a consortium schema, a run's task)."""

DAYS_PER_UNIT: dict[str, float] = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}
"""Each unit, in days."""
TIME_UNITS: tuple[str, ...] = tuple(DAYS_PER_UNIT)
"""The unit names, shortest first."""
