"""The two URLs a guest calls while it installs: its config, and the call-back at the end.

No login: the one-time token in the URL and the caller's address (one of the server's own)
are the credentials. Anything else is a plain 404 that says nothing about why.
"""

from django.http import Http404, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from panel.accounts.tenancy import client_address
from recipes.runner import OUTPUT_LIMIT
from templates_os import provisioning


@require_GET
def config(request, token: str):
    try:
        served = provisioning.serve_config(token, client_address(request) or "", request.build_absolute_uri())
    except provisioning.NotFound:
        raise Http404() from None
    return HttpResponse(served.text, content_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "no-store"})


@csrf_exempt
@require_POST
def callback(request, token: str):
    try:
        exit_code = int(request.GET.get("exit", ""))
    except ValueError:
        exit_code = None
    output = request.body[-OUTPUT_LIMIT:].decode("utf-8", errors="replace")
    try:
        provisioning.record_callback(token, client_address(request) or "", exit_code, output)
    except provisioning.NotFound:
        raise Http404() from None
    return HttpResponse("ok\n", content_type="text/plain")
