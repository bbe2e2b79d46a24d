"""Per-user language and the TOTP gate for sessions."""

from django.shortcuts import redirect
from django.urls import reverse

SESSION_OTP_PENDING = "otp_pending"


class UserLanguageMiddleware:
    """Make the user's language (or their customer's) the one LocaleMiddleware picks.

    Runs before LocaleMiddleware and before authentication, so it reads the language the
    login view stored in the session.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        language = request.session.get("panel_language") if hasattr(request, "session") else None
        if language:
            request.COOKIES["django_language"] = language
        return self.get_response(request)


class SecondFactorMiddleware:
    """A session that passed the password but not yet the TOTP code reaches only the code page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated and request.session.get(SESSION_OTP_PENDING):
            allowed = {reverse("ui:otp"), reverse("ui:logout"), reverse("ui:language")}
            if request.path not in allowed and not request.path.startswith("/static/"):
                if request.path.startswith("/api/"):
                    from django.http import JsonResponse

                    return JsonResponse({"detail": "Second factor required.", "code": "otp_required"}, status=401)
                return redirect("ui:otp")
        return self.get_response(request)
