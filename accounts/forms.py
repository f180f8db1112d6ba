from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import User
from .uploads import store_avatar


class SignUpForm(UserCreationForm):
    """Handle and password. The handle rules live on User.username; case-insensitive
    uniqueness comes from UserCreationForm.clean_username and the database constraint."""

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username",)


class ProfileForm(forms.ModelForm):
    """Display name and a new avatar. The avatar is checked here, before anything is stored."""

    avatar = forms.FileField(
        required=False,
        help_text="JPEG, PNG, WebP or GIF; at most 10 MB and 40 megapixels.",
        widget=forms.FileInput(attrs={"accept": "image/jpeg,image/png,image/webp,image/gif"}),
    )

    class Meta:
        model = User
        fields = ("display_name",)

    def clean_avatar(self):
        upload = self.cleaned_data.get("avatar")
        if upload:
            # Pillow, imported by the first upload rather than with the URLconf: a web process
            # that takes none, and every worker that builds a link, goes without it.
            from .images import validate_upload

            self.avatar_format = validate_upload(upload)
        return upload

    def save(self, commit: bool = True) -> User:
        user = super().save(commit)
        if commit and self.cleaned_data.get("avatar"):
            store_avatar(user, self.cleaned_data["avatar"], self.avatar_format)
        return user
