"""One error format for the whole API: {"detail", "code"} plus "fields" for validation errors."""

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from panel.api import throttling
from panel.refusals import Refused


def _first_message(data) -> str:
    if isinstance(data, dict):
        for key, value in data.items():
            msg = _first_message(value)
            return msg if key == "non_field_errors" else f"{key}: {msg}"
    if isinstance(data, list) and data:
        return _first_message(data[0])
    return str(data)


def exception_handler(exc, context):
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)) and context.get("request"):
        # Not past the key check, so not past the throttles either (DRF checks them after the
        # permissions): count it against its address here, or key guessing would be unlimited.
        allowed, wait = throttling.address_allows(context["request"])
        if not allowed:
            exc = exceptions.Throttled(wait)
    if isinstance(exc, Refused):
        body = {"detail": exc.message, "code": exc.code}
        if exc.field:
            body["fields"] = {exc.field: [exc.message]}
        retry_after = getattr(exc, "retry_after", None)  # panel.limits.RateLimited
        return Response(body, status=exc.status, headers={"Retry-After": str(retry_after)} if retry_after else None)
    if isinstance(exc, Http404):
        return Response({"detail": "Not found.", "code": "not_found"}, status=status.HTTP_404_NOT_FOUND)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = {"detail": _first_message(fields), "code": "invalid", "fields": fields}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = {"detail": str(detail), "code": code}
    return response
