"""The alert pages' forms: a customer's own rule, and the tuning of a built-in rule.

Both are ModelForms, so `Rule.clean()` (the model's invariants, shared with the API) runs on
every submit: a bad value is shown on its field and nothing is saved.
"""

from django import forms
from django.utils.translation import gettext_lazy as _

from panel.alerts.kinds import CUSTOMER_LABELS
from panel.alerts.models import CUSTOMER_KINDS, Rule
from panel.vps.models import ServerState, VirtualServer


class CustomerRuleForm(forms.ModelForm):
    """A customer's rule on one of its servers (or all of them)."""

    kind = forms.ChoiceField(label=_("Watch"), choices=[(k.value, CUSTOMER_LABELS[k]) for k in CUSTOMER_KINDS])

    class Meta:
        model = Rule
        fields = ["name", "kind", "server", "warning", "critical", "for_minutes", "email", "enabled"]
        labels = {"warning": _("Threshold"), "critical": _("Critical threshold"), "for_minutes": _("For (minutes)"),
                  "server": _("Server"), "email": _("E-mail to")}
        help_texts = {"warning": _("Percent: of the CPU, the memory, the month's traffic quota or the filesystem"),
                      "critical": _("Optional"), "server": _("Empty: all your servers")}

    def __init__(self, *args, customer_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.customer_id = customer_id
        # Only the customer's own servers are offered (and accepted).
        self.fields["server"].queryset = VirtualServer.objects.filter(customer_id=customer_id).exclude(
            state=ServerState.DELETING).order_by("hostname")
        self.fields["server"].empty_label = _("All my servers")
        self.fields["server"].required = False


class BuiltinRuleForm(forms.ModelForm):
    """An admin's tuning of a built-in rule."""

    class Meta:
        model = Rule
        fields = ["enabled", "warning", "critical", "for_minutes", "margin", "resolve_after", "notify_customer"]
        widgets = {name: forms.NumberInput(attrs={"step": "any", "class": "num-input"})
                   for name in ("warning", "critical", "margin")}
