from datetime import UTC, date, datetime, time, timedelta

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


def parse_export_command(text: str) -> tuple[str, datetime | None, datetime | None]:
    """`/export [format] [from] [to]` as (format, since, until); ValueError with the usage if malformed."""
    words = text.split()
    if not words or words[0] != "/export" or len(words) > 4:
        raise ValueError(EXPORT_USAGE)
    format = FORMAT_ALIASES.get(words[1].lower()) if len(words) > 1 else Job.Format.JSONL
    if format is None:
        raise ValueError(EXPORT_USAGE)
    form = ExportForm({"format": format, "since": words[2] if len(words) > 2 else "", "until": words[3] if len(words) > 3 else ""})
    if not form.is_valid():
        problems = " ".join(error for errors in form.errors.values() for error in errors)
        raise ValueError(f"{problems} {EXPORT_USAGE}")
    return (format, *form.date_range())
