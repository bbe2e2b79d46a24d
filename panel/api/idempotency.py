"""Idempotency-Key on POST: the same key and body within 24 h get the first answer again.

The key is claimed by inserting a row under a unique constraint before the work starts, so
concurrent retries cannot both do the work: the loser waits for the winner's answer.
"""

import hashlib
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response

from panel.api.models import IdempotentRequest

WAIT_FOR_FIRST_SECONDS = 30


class IdempotencyConflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "idempotency_conflict"
    default_detail = "This Idempotency-Key was used with a different request."


class _Replay(Exception):
    def __init__(self, record: IdempotentRequest):
        self.record = record


def _principal(request) -> str:
    key = getattr(request, "auth", None)
    return f"key:{key.pk}" if hasattr(key, "key_hash") else f"user:{request.user.pk}"


class IdempotentViewMixin:
    """Add to a DRF view: POSTs honour the Idempotency-Key header."""

    _idempotent_record: IdempotentRequest | None = None
    # Fields of the answer never stored for replay (secrets shown once).
    secret_response_fields: tuple[str, ...] = ()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        key = request.headers.get("Idempotency-Key", "").strip()
        if request.method != "POST" or not key:
            return
        if len(key) > 255:
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"Idempotency-Key": ["At most 255 characters."]})
        principal = _principal(request)
        fingerprint = hashlib.sha256(f"{request.method} {request.path}\n".encode() + request.body).hexdigest()
        cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
        IdempotentRequest.objects.filter(principal=principal, key=key, created_at__lt=cutoff).delete()
        try:
            with transaction.atomic():
                self._idempotent_record = IdempotentRequest.objects.create(
                    principal=principal, key=key, fingerprint=fingerprint
                )
            return
        except IntegrityError:
            pass
        deadline = time.monotonic() + WAIT_FOR_FIRST_SECONDS
        while True:
            record = IdempotentRequest.objects.filter(principal=principal, key=key).first()
            if record is None:  # the first attempt failed with a server error and let go
                return self.initial(request, *args, **kwargs)
            if record.fingerprint != fingerprint:
                raise IdempotencyConflict()
            if record.status_code is not None:
                raise _Replay(record)
            if time.monotonic() > deadline:
                raise IdempotencyConflict("The first request with this Idempotency-Key is still running.")
            time.sleep(0.05)

    def handle_exception(self, exc):
        if isinstance(exc, _Replay):
            return Response(exc.record.response_body, status=exc.record.status_code,
                            headers={"Idempotent-Replayed": "true"})
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        record = self._idempotent_record
        if record is not None:
            self._idempotent_record = None
            if response.status_code >= 500:
                record.delete()  # a server error is not an answer: a retry may try again
            else:
                record.status_code = response.status_code
                body = response.data
                if isinstance(body, dict) and self.secret_response_fields:
                    body = {k: v for k, v in body.items() if k not in self.secret_response_fields}
                    body["detail"] = "Replayed answer: secrets are shown only in the first answer."
                record.response_body = body
                record.save(update_fields=["status_code", "response_body"])
        return response
