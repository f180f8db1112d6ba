"""An app with a schedule of its own, for tests/test_e2e_schedules.py (installed by tests/schedule_settings.py)."""
