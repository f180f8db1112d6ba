from django import forms

from accounts.models import User


class NewRoomForm(forms.Form):
    is_private = forms.BooleanField(required=False, label="Private")


class InviteForm(forms.Form):
    handle = forms.CharField(max_length=30)

    def clean_handle(self) -> User:
        handle = self.cleaned_data["handle"].strip().lstrip("@")
        try:
            return User.objects.get(username__iexact=handle, is_active=True)
        except User.DoesNotExist:
            raise forms.ValidationError(f"No user with the handle {handle!r}.") from None
