"""Signing in and out, the TOTP second factor, language and the user's own security page."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login as auth_login, logout as auth_logout
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.accounts import audit, sessions, throttle, totp
from panel.accounts.middleware import SESSION_OTP_PENDING
from panel.accounts.models import UserSession
from panel.accounts.tenancy import actor_for, client_address
from panel.ui.forms import CodeForm, DisableTotpForm, LoginForm
from panel.ui.views.common import safe_next

SESSION_LANGUAGE = "panel_language"
SESSION_OTP_NEXT = "otp_next"
SESSION_TOTP_SETUP = "totp_setup_secret"
LANGUAGES = ("en", "ru")


def login(request):
    if request.user.is_authenticated and not request.session.get(SESSION_OTP_PENDING):
        return redirect("ui:home")
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    form = LoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["username"]
        address = client_address(request)
        if throttle.is_locked_out(username, address):
            form.add_error(None, _("Too many failed sign-in attempts. Wait a few minutes and try again."))
        else:
            user = authenticate(request, username=username, password=form.cleaned_data["password"])
            if user is None:
                throttle.record_failure(username, address)
                form.add_error(None, _("Wrong username or password."))
            else:
                # Only this user's own failures from here: others' (someone guessing another
                # account from this address) stay until they expire.
                throttle.clear_failures(username, address)
                language = request.session.get(SESSION_LANGUAGE)
                auth_login(request, user)
                if user.preferred_language:
                    request.session[SESSION_LANGUAGE] = user.preferred_language
                elif language:
                    request.session[SESSION_LANGUAGE] = language
                if user.totp_secret:
                    request.session[SESSION_OTP_PENDING] = True
                    request.session[SESSION_OTP_NEXT] = next_url
                    return redirect("ui:otp")
                audit.record(actor_for(request), "user.login", user)
                return safe_next(request, next_url)
    return render(request, "ui/login.html", {"form": form, "next": next_url})


def otp(request):
    if not request.user.is_authenticated:
        return redirect("ui:login")
    if not request.session.get(SESSION_OTP_PENDING):
        return redirect("ui:home")
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user, address = request.user, client_address(request)
        # The codes' own counter: signing in with the password again does not reset it.
        if throttle.code_locked(user.username):
            form.add_error(None, _("Too many failed attempts. Wait a few minutes and try again."))
        elif totp.accept(user, form.cleaned_data["code"]):
            throttle.clear_code_failures(user.username)
            request.session.pop(SESSION_OTP_PENDING, None)
            next_url = request.session.pop(SESSION_OTP_NEXT, "")
            request.session.cycle_key()
            audit.record(actor_for(request), "user.login", user, second_factor=True)
            return safe_next(request, next_url)
        elif throttle.record_code_failure(user.username, address):
            audit.record(actor_for(request), "user.otp_lockout", user)
            _sign_out(request)
            messages.error(request, _("Too many wrong codes. Sign in with your password again."))
            return redirect("ui:login")
        else:
            form.add_error("code", _("That code is not valid. Check your device's clock and try again."))
    return render(request, "ui/otp.html", {"form": form})


def _sign_out(request):
    language = request.session.get(SESSION_LANGUAGE)
    auth_logout(request)
    if language:
        request.session[SESSION_LANGUAGE] = language


@require_POST
def logout(request):
    _sign_out(request)
    messages.info(request, _("You are signed out."))
    return redirect("ui:login")


@login_required
def home(request):
    if request.user.is_provider_admin:
        return redirect("ui:admin-dashboard")
    return redirect("ui:servers")


@require_POST
def language(request):
    """Switch the interface language: for this session, and for the user from now on."""
    code = request.POST.get("language", "")
    if code in LANGUAGES:
        request.session[SESSION_LANGUAGE] = code
        user = request.user
        if user.is_authenticated and user.language != code:
            before = user.language
            user.language = code
            user.save(update_fields=["language"])
            audit.record(actor_for(request), "user.language", user, before=before, after=code)
    return safe_next(request, request.POST.get("next") or request.META.get("HTTP_REFERER"))


@login_required
def security(request):
    """Turn the TOTP second factor on (a valid code) or off (the password and a valid code)."""
    user = request.user
    if user.totp_secret:
        form = DisableTotpForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            address = client_address(request)
            if throttle.is_locked_out(user.username, address) or throttle.code_locked(user.username):
                form.add_error(None, _("Too many failed attempts. Wait a few minutes and try again."))
            elif not user.check_password(form.cleaned_data["password"]):
                throttle.record_failure(user.username, address)
                form.add_error("password", _("Wrong password."))
            elif not totp.accept(user, form.cleaned_data["code"]):
                throttle.record_code_failure(user.username, address)
                form.add_error("code", _("That code is not valid. Check your device's clock and try again."))
            else:
                throttle.clear_failures(user.username, address)
                user.totp_secret = ""
                user.save(update_fields=["totp_secret"])
                audit.record(actor_for(request), "user.totp_disable", user)
                messages.success(request, _("Two-factor authentication is now off."))
                return redirect("ui:security")
        return render(request, "ui/security.html", {"form": form, "enabled": True})

    form = CodeForm(request.POST or None)
    secret = request.session.get(SESSION_TOTP_SETUP)
    if not secret:
        secret = request.session[SESSION_TOTP_SETUP] = totp.new_secret()
    if request.method == "POST" and form.is_valid():
        if totp.verify(secret, form.cleaned_data["code"]):
            user.totp_secret = secret
            totp.remember(user, secret, form.cleaned_data["code"])  # that code cannot sign in too
            user.save(update_fields=["totp_secret", "totp_last_step"])
            request.session.pop(SESSION_TOTP_SETUP, None)
            audit.record(actor_for(request), "user.totp_enable", user)
            messages.success(request, _("Two-factor authentication is now on. You will need a code at every sign-in."))
            return redirect("ui:security")
        form.add_error("code", _("That code is not valid. Check your device's clock and try again."))
    return render(request, "ui/security.html", {
        "form": form, "enabled": False, "secret": secret, "uri": totp.provisioning_uri(secret, user.username),
        "required": settings.REQUIRE_ADMIN_2FA and user.is_provider_admin,
    })


@login_required
def session_list(request):
    """The user's own signed-in sessions: when, from where, with what; end one or all."""
    rows = sessions.of_user(request.user)
    return render(request, "ui/sessions.html", {"rows": rows, "current": request.session.session_key,
                                                "idle_minutes": settings.SESSION_IDLE_SECONDS // 60})


@require_POST
@login_required
def session_end(request, session_id: int):
    row = get_object_or_404(UserSession, pk=session_id, user=request.user)  # another's: 404
    current = row.session_key == request.session.session_key
    audit.record(actor_for(request), "user.session_end", request.user, session=row.pk,
                 session_address=row.address, current=current)
    sessions.end(row)
    if current:
        _sign_out(request)
        messages.info(request, _("You are signed out."))
        return redirect("ui:login")
    messages.success(request, _("That session is signed out."))
    return redirect("ui:sessions")


@require_POST
@login_required
def session_end_all(request):
    """Sign out everywhere, this browser included (for when the account may be in other hands)."""
    actor = actor_for(request)
    count = sessions.end_all(request.user)
    audit.record(actor, "user.sessions_end_all", request.user, sessions=count)
    _sign_out(request)
    messages.info(request, _("You are signed out everywhere."))
    return redirect("ui:login")
