from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model


class NotificationSettingsForm(forms.Form):
    """Where mentions reach a user. Shown in the profile page's notification section."""

    mention_channel = forms.ChoiceField(
        label="Tell me about mentions", choices=get_user_model().MentionChannel.choices, widget=forms.RadioSelect
    )
    email = forms.EmailField(required=False, max_length=254)
    phone = forms.CharField(
        label="Mobile number", required=False, max_length=40,
        help_text="With the country code, e.g. +44 7400 123456. A national number is read as "
        f"{settings.PHONE_DEFAULT_REGION}.",
    )  # fmt: skip

    def __init__(self, *args, offer: list[str] | None = None, **kwargs) -> None:
        """`offer`: the channels the page offers (notify.choosable_channels); a post may name any,
        and notify.change_settings keeps the user's channel when one is not choosable."""
        super().__init__(*args, **kwargs)
        if offer is not None:
            field = self.fields["mention_channel"]
            field.choices = [(value, label) for value, label in field.choices if value in offer]

    def clean_phone(self) -> str:
        """The number in E.164 (+14155550100), or a clear error."""
        # Imported by the first number checked: every process that loads the templates' tags
        # (the system checks do) would otherwise hold its metadata (worker memory).
        import phonenumbers

        raw = self.cleaned_data["phone"].strip()
        if not raw:
            return ""
        try:
            number = phonenumbers.parse(raw, settings.PHONE_DEFAULT_REGION)
        except phonenumbers.NumberParseException:
            raise forms.ValidationError(
                "That does not look like a phone number. Write it with its country code, e.g. +44 7400 123456."
            )
        if not phonenumbers.is_valid_number(number):
            raise forms.ValidationError(
                f"{raw} is not a valid phone number (check the country code and the number of digits)."
            )
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def clean(self) -> dict:
        data = super().clean()
        channel = data.get("mention_channel")
        if channel == "email" and not data.get("email") and "email" not in self.errors:
            self.add_error("email", "Mentions by email need an email address.")
        if channel == "sms" and not data.get("phone") and "phone" not in self.errors:
            self.add_error("phone", "Mentions by SMS need a mobile number.")
        return data


class PhoneCodeForm(forms.Form):
    code = forms.CharField(
        label="Code from the SMS", max_length=6, min_length=6,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "one-time-code"}),
    )  # fmt: skip
