"""Forms of the web UI. Model validation (validators, Model.clean) runs through ModelForms."""

from django import forms
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from nodes.models import Node
from panel.accounts.models import LANGUAGE_CHOICES, ApiKey, Customer, User
from panel.vps.lifecycle import boot_images
from panel.vps.models import Plan, hostname_validator


class LoginForm(forms.Form):
    username = forms.CharField(label=_("Username"), max_length=150,
                               widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}))
    password = forms.CharField(label=_("Password"), strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class CodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code from your authenticator app"), max_length=10,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "one-time-code", "inputmode": "numeric",
                                      "pattern": "[0-9 ]*"}),
    )


class CustomerForm(forms.ModelForm):
    class Meta:
        model = Customer
        fields = ["name", "email", "external_id", "language"]
        labels = {"name": _("Name"), "email": _("Email"), "external_id": _("External ID"),
                  "language": _("Language")}
        help_texts = {"external_id": _("The billing system's identifier of this customer (optional).")}


class UserCreateForm(forms.ModelForm):
    password1 = forms.CharField(label=_("Password"), strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label=_("Password again"), strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name", "role", "customer", "language"]
        labels = {"username": _("Username"), "email": _("Email"), "first_name": _("First name"),
                  "last_name": _("Last name"), "role": _("Role"), "customer": _("Customer"),
                  "language": _("Language")}
        help_texts = {"username": _("Letters, digits and @/./+/-/_ only."),
                      "customer": _("Required for a customer's user; empty for a provider admin.")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customer"].empty_label = _("(none)")
        self.fields["language"].choices = [("", _("(the customer's language)")), *LANGUAGE_CHOICES]

    def clean(self):
        cleaned = super().clean()
        p1, p2 = cleaned.get("password1"), cleaned.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", _("The two passwords differ."))
        elif p1:
            user = User(username=cleaned.get("username", ""), email=cleaned.get("email", ""))
            try:
                validate_password(p1, user)
            except ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned

    def save(self, commit=True):
        user = super().save(commit=False)
        user.set_password(self.cleaned_data["password1"])
        if commit:
            user.save()
        return user


class PlanForm(forms.ModelForm):
    class Meta:
        model = Plan
        fields = ["name", "vcpus", "ram_mib", "disk_gib", "traffic_gib", "bandwidth_mbit", "ipv4_count",
                  "ipv6_count", "backups"]
        labels = {"name": _("Name"), "vcpus": _("vCPUs"), "ram_mib": _("RAM (MiB)"), "disk_gib": _("Disk (GiB)"),
                  "traffic_gib": _("Traffic (GiB per month)"), "bandwidth_mbit": _("Bandwidth (Mbit/s)"),
                  "ipv4_count": _("IPv4 addresses"), "ipv6_count": _("IPv6 addresses"), "backups": _("Backups")}


class ServerCreateForm(forms.Form):
    customer = forms.ModelChoiceField(label=_("Customer"), queryset=Customer.objects.all())
    plan = forms.ModelChoiceField(label=_("Plan"), queryset=Plan.objects.all())
    hostname = forms.CharField(label=_("Hostname"), max_length=253, validators=[hostname_validator])
    os_template = forms.ChoiceField(label=_("Operating system"))
    node = forms.ModelChoiceField(label=_("Node"), queryset=Node.objects.all(), required=False,
                                  help_text=_("Leave empty to place the server on the online node with the most free RAM."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["node"].empty_label = _("Automatic")
        self.fields["os_template"].choices = [(key, image["name"]) for key, image in boot_images().items()]


class SuspendForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=500, required=False)


class ApiKeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    scope = forms.ChoiceField(label=_("Scope"), choices=ApiKey.Scope.choices)
    customer = forms.ModelChoiceField(label=_("Customer"), queryset=Customer.objects.all(), required=False,
                                      help_text=_("Only for keys of the customer scope."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customer"].empty_label = _("(none)")

    def clean(self):
        cleaned = super().clean()
        if "scope" in cleaned:
            key = ApiKey(name=cleaned.get("name", ""), scope=cleaned["scope"], customer=cleaned.get("customer"))
            try:
                key.clean()
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    self.add_error(field if field in self.fields else None, errors)
        return cleaned


class CustomerApiKeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
