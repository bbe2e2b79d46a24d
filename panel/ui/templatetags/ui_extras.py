from django import template
from django.utils.translation import gettext as _

register = template.Library()


@register.simple_tag(takes_context=True)
def nav_active(context, *prefixes):
    """'active' when the current URL name starts with one of `prefixes`."""
    match = getattr(context.get("request"), "resolver_match", None)
    name = match.url_name if match else ""
    return "active" if name and any(name.startswith(p) for p in prefixes) else ""


@register.simple_tag(takes_context=True)
def query_with(context, **changes):
    """The current query string with some parameters replaced (for pagination and filters)."""
    query = context["request"].GET.copy()
    for key, value in changes.items():
        if value in (None, ""):
            query.pop(key, None)
        else:
            query[key] = value
    encoded = query.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.filter
def mib(value):
    """Show MiB as GiB when it divides evenly and is large."""
    try:
        value = int(value)
    except (TypeError, ValueError):
        return value
    if value >= 1024 and value % 1024 == 0:
        return _("%(n)s GiB") % {"n": value // 1024}
    return _("%(n)s MiB") % {"n": value}


@register.filter
def op_status(operation):
    """An operation's status in words that fit an operation."""
    from panel.ui.live import status_label

    return status_label(operation.status)
