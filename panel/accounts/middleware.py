"""Per-user language, session lifetimes, and the TOTP gates for sessions."""

from django.conf import settings
from django.contrib.auth import logout
from django.http import JsonResponse
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


class SessionActivityMiddleware:
    """Sign a session out once idle for SESSION_IDLE_SECONDS or older than SESSION_MAX_SECONDS
    (the request then goes on anonymous: a page redirects to sign-in, the API answers 401/403),
    and keep the user's sessions page up to date."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated and hasattr(request, "session"):
            from panel.accounts import sessions
            from panel.accounts.tenancy import client_address

            if sessions.expired(request.session):
                logout(request)
            else:
                sessions.touch(request, client_address(request), bool(request.session.get(SESSION_OTP_PENDING)))
        return self.get_response(request)


class SecondFactorMiddleware:
    """A session that passed the password but not yet the TOTP code reaches only the code page;
    with REQUIRE_ADMIN_2FA, an admin without a second factor reaches only the page that sets it up."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if not user.is_authenticated or request.path.startswith("/static/"):
            return self.get_response(request)
        if request.session.get(SESSION_OTP_PENDING):
            if request.path not in {reverse("ui:otp"), reverse("ui:logout"), reverse("ui:language")}:
                if request.path.startswith("/api/"):
                    return JsonResponse({"detail": "Second factor required.", "code": "otp_required"}, status=401)
                return redirect("ui:otp")
        elif settings.REQUIRE_ADMIN_2FA and getattr(user, "is_provider_admin", False) and not user.totp_secret:
            if request.path not in {reverse("ui:security"), reverse("ui:logout"), reverse("ui:language")}:
                if request.path.startswith("/api/"):
                    return JsonResponse({"detail": "Set up two-factor authentication first (REQUIRE_ADMIN_2FA).",
                                         "code": "totp_setup_required"}, status=403)
                return redirect("ui:security")
        return self.get_response(request)
