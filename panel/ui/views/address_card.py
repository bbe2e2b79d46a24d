"""The server page's addresses card, which the server views (panel/ui/views/servers.py) render
and the address views (panel/ui/views/ipam.py) render again with their bound forms."""

from panel.ui.forms import PtrForm, ServerAddressForm
from panel.vps.models import VirtualServer


def server_addresses(server: VirtualServer, act, ptr_forms: dict | None = None, add_form=None) -> dict:
    """The card's context: the server's addresses, a PTR form each, and the admin's add form."""
    ptr_forms = ptr_forms or {}
    rows = []
    for row in server.ip_addresses.select_related("pool__network").order_by("pool__network_id", "ordinal"):
        rows.append({"address": row, "form": ptr_forms.get(row.pk) or PtrForm(initial={"ptr": row.ptr},
                                                                              prefix=f"ip{row.pk}")})
    context = {"addresses": rows}
    if act.is_admin:
        context["address_form"] = add_form or ServerAddressForm(server=server)
    return context
