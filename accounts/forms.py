from django.contrib.auth.forms import UserCreationForm

from .models import User


class SignUpForm(UserCreationForm):
    """Handle and password. The handle rules live on User.username; case-insensitive
    uniqueness comes from UserCreationForm.clean_username and the database constraint."""

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username",)
