from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms

from .models import Job

# What `/export <format>` and the form accept; "json" is the short name of JSON Lines.
FORMAT_ALIASES = {"json": Job.Format.JSONL, "jsonl": Job.Format.JSONL, "csv": Job.Format.CSV, "html": Job.Format.HTML}
EXPORT_USAGE = "Usage: /export [json|csv|html] [from YYYY-MM-DD] [to YYYY-MM-DD], e.g. /export csv 2026-01-01 2026-01-31"


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=Job.Format.choices, initial=Job.Format.JSONL)
    since = forms.DateField(required=False, label="From", help_text="First day (UTC), inclusive.")
    until = forms.DateField(required=False, label="To", help_text="Last day (UTC), inclusive.")

    def clean(self) -> dict:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise forms.ValidationError("The first day must not be after the last.")
        return data

    def date_range(self) -> tuple[datetime | None, datetime | None]:
        """The days as the job stores them: from the first day's midnight to the midnight after the last."""
        return day_start(self.cleaned_data["since"]), day_start(self.cleaned_data["until"], plus_one=True)


def day_start(day: date | None, plus_one: bool = False) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day + timedelta(days=1) if plus_one else day, time.min, tzinfo=UTC)


def export_options(frame: dict[str, Any]) -> tuple[str, datetime | None, datetime | None]:
    """An export frame's (format, since, until), checked as the form checks them; ValueError with the usage if not."""
    format = FORMAT_ALIASES.get(frame.get("format", "json").lower())
    if format is None:
        raise ValueError(EXPORT_USAGE)
    form = ExportForm({"format": format, "since": frame.get("since", ""), "until": frame.get("until", "")})
    if not form.is_valid():
        problems = " ".join(error for errors in form.errors.values() for error in errors)
        raise ValueError(f"{problems} {EXPORT_USAGE}")
    return (format, *form.date_range())
