"""The OpenAPI schema's shared parts, in one place (DEFAULT_SCHEMA_CLASS in settings):

- the API-key auth (`Authorization: Token <key>`) as a security scheme;
- the error answers every operation can give, in the one error format of errors.py
  ({detail, code} plus `fields` for validation errors): 400, 401, 403, 404, 409, 429;
- the `Idempotency-Key` header on every POST.

A view's own @extend_schema answers win: only codes it does not document are added.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "panel.accounts.api_auth.ApiKeyAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <key>`: an API key (scope admin, billing or customer)"}


class ErrorSerializer(serializers.Serializer):
    """Every error answer: `detail` for humans, `code` for machines, `fields` (validation
    errors only) with the messages per field."""

    detail = serializers.CharField()
    code = serializers.CharField(help_text="e.g. invalid, not_authenticated, permission_denied, not_found, "
                                           "idempotency_conflict, server_suspended, customer_has_servers, limit_reached, "
                                           "throttled, rate_limited")
    fields = serializers.DictField(required=False, child=serializers.JSONField(),
                                   help_text="Validation errors: field name → list of messages")


ERROR_CODES = {
    "400": "Bad input (validation errors in `fields`), a bad filter value or Idempotency-Key, or "
           "`unknown_filter`: a query parameter the operation does not list (named in `fields`; nothing is listed)",
    "401": "No key, or a wrong or revoked one",
    "403": "The key may not do this",
    "404": "No such object, or not the caller's",
    "409": "Refused in the object's current state, an Idempotency-Key used with another body, or "
           "`limit_reached`: the customer holds as many servers, API keys or webhooks as its limit allows",
    "429": "Too many requests, with `Retry-After` (seconds): `throttled` when the key's or the address's rate "
           "is used up (default 600 a minute per key, 1200 per address), `rate_limited` for a customer's "
           "console URLs (10 a minute) and backups (10 an hour). Wait, then retry the same request",
}

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Any string up to 255 characters (e.g. the billing system's order or service id): the same "
                "key with the same body within 24 h returns the first answer and does nothing again; with a "
                "different body, 409 `idempotency_conflict`. Keys are per caller. Secrets shown once (a "
                "root password, an API key, a webhook secret, a console URL) are neither kept nor replayed.",
)


class PanelAutoSchema(AutoSchema):
    def get_override_parameters(self):
        params = list(super().get_override_parameters())
        if self.method == "POST":
            params.append(IDEMPOTENCY_KEY)
        return params

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        codes = dict(ERROR_CODES)
        if self.method in ("POST", "PUT", "PATCH"):
            codes["415"] = "The request body's Content-Type is not one the operation reads"
        for code, description in codes.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code)
                responses[code]["description"] = description
        return responses
