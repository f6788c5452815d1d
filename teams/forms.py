from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User

from teams.errors import field_and_message
from teams.models import BASE_URL_MAX_LENGTH, ProviderKind, Role, TokenScope


class TeamForm(forms.Form):
    name = forms.CharField(max_length=120)


class BaseURLField(forms.CharField):
    """A provider's base URL, as typed. Not a URLField: that refuses single-label hosts such as
    a docker-compose service (http://vllm:8000/v1). The credential services check it with
    worker.ssrf.check_base_url, which allows those only with "allow private network"."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", BASE_URL_MAX_LENGTH)
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> str:
        text = str(super().to_python(value))
        # As URLField's assume_scheme did: a URL typed without its scheme is https.
        if text and "://" not in text:
            text = f"https://{text}"
        return text


class CredentialForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="e.g. prod-openai")
    provider = forms.ChoiceField(choices=ProviderKind.choices)
    base_url = BaseURLField(
        help_text="Only for OpenAI-compatible endpoints (vLLM, Ollama, Together…)",
    )
    api_key = forms.CharField(widget=forms.PasswordInput(render_value=False), strip=True)
    allow_private_network = forms.BooleanField(
        required=False, help_text="Allow loopback/private addresses (self-hosted endpoints only)"
    )


class CredentialEditForm(forms.Form):
    name = forms.CharField(max_length=80)
    base_url = BaseURLField()
    api_key = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Leave empty to keep the stored key. Required when the base URL changes.",
    )
    allow_private_network = forms.BooleanField(required=False)


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="e.g. nightly-ingest, ci-gate")
    scopes = forms.MultipleChoiceField(
        choices=TokenScope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[TokenScope.READ],
        help_text="A token never does more than your role allows.",
    )


class InviteForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices, initial=Role.REVIEWER)
    email = forms.EmailField(required=False, help_text="Optional, for your own reference")


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


if TYPE_CHECKING:
    _UserCreationForm = UserCreationForm[User]
else:  # generic only in the stubs
    _UserCreationForm = UserCreationForm


class SignupForm(_UserCreationForm):
    pass


def apply_errors(form: forms.Form, error: Any) -> None:
    """Put a service's error onto the form, by field where it names one: a ValidationError's
    fields, or an exception's ``field`` attribute (its ``message`` says what is wrong)."""
    if hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            form.add_error(field if field in form.fields else None, messages)
    elif hasattr(error, "field"):
        name, message = field_and_message(error)
        form.add_error(name if name in form.fields else None, message)
    else:
        form.add_error(None, error.messages)
