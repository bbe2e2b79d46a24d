"""Signing in and out, the TOTP second factor, language and the user's own security page."""

from django.contrib import messages
from django.contrib.auth import authenticate, login as auth_login, logout as auth_logout
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.accounts import audit, throttle, totp
from panel.accounts.middleware import SESSION_OTP_PENDING
from panel.accounts.tenancy import actor_for, client_address
from panel.ui.forms import CodeForm, LoginForm
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
        if throttle.is_locked_out(user.username, address):
            form.add_error(None, _("Too many failed attempts. Wait a few minutes and try again."))
        elif totp.verify(user.totp_secret, form.cleaned_data["code"]):
            throttle.clear_failures(user.username, address)
            request.session.pop(SESSION_OTP_PENDING, None)
            next_url = request.session.pop(SESSION_OTP_NEXT, "")
            request.session.cycle_key()
            audit.record(actor_for(request), "user.login", user, second_factor=True)
            return safe_next(request, next_url)
        else:
            throttle.record_failure(user.username, address)
            form.add_error("code", _("That code is not valid. Check your device's clock and try again."))
    return render(request, "ui/otp.html", {"form": form})


@require_POST
def logout(request):
    language = request.session.get(SESSION_LANGUAGE)
    auth_logout(request)
    if language:
        request.session[SESSION_LANGUAGE] = language
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
    """Turn the TOTP second factor on or off for yourself; both need a valid code."""
    user = request.user
    form = CodeForm(request.POST or None)
    if user.totp_secret:
        if request.method == "POST" and form.is_valid():
            if totp.verify(user.totp_secret, form.cleaned_data["code"]):
                user.totp_secret = ""
                user.save(update_fields=["totp_secret"])
                audit.record(actor_for(request), "user.totp_disable", user)
                messages.success(request, _("Two-factor authentication is now off."))
                return redirect("ui:security")
            form.add_error("code", _("That code is not valid. Check your device's clock and try again."))
        return render(request, "ui/security.html", {"form": form, "enabled": True})

    secret = request.session.get(SESSION_TOTP_SETUP)
    if not secret:
        secret = request.session[SESSION_TOTP_SETUP] = totp.new_secret()
    if request.method == "POST" and form.is_valid():
        if totp.verify(secret, form.cleaned_data["code"]):
            user.totp_secret = secret
            user.save(update_fields=["totp_secret"])
            request.session.pop(SESSION_TOTP_SETUP, None)
            audit.record(actor_for(request), "user.totp_enable", user)
            messages.success(request, _("Two-factor authentication is now on. You will need a code at every sign-in."))
            return redirect("ui:security")
        form.add_error("code", _("That code is not valid. Check your device's clock and try again."))
    return render(request, "ui/security.html", {
        "form": form, "enabled": False, "secret": secret, "uri": totp.provisioning_uri(secret, user.username),
    })
