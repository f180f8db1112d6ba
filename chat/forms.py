from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser


class NewRoomForm(forms.Form):
    is_private = forms.BooleanField(required=False, label="Private")


class InviteForm(forms.Form):
    handle = forms.CharField(max_length=30)

    def clean_handle(self) -> AbstractBaseUser:
        handle = self.cleaned_data["handle"].strip().lstrip("@")
        User = get_user_model()
        try:
            return User.objects.get(username__iexact=handle, is_active=True)
        except User.DoesNotExist:
            raise forms.ValidationError(f"No user with the handle {handle!r}.") from None
