"""Post-install recipes: scripts with declared parameters, run inside the new system."""

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy

PARAMETER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Parameters become environment variables (upper case); these would break the script's shell.
RESERVED = {"path", "home", "shell", "ifs", "user", "pwd", "lang", "term", "ps1", "ps4", "env", "bash_env"}


class Recipe(models.Model):
    """A script run after the OS is installed, with the parameters a customer fills in."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    os_families = models.JSONField(default=list, help_text=_lazy("The OS families it fits, e.g. [\"debian\", \"rhel\"]"))
    parameters = models.JSONField(default=list, blank=True,
                                  help_text=_lazy("A list of {name, label, required, default, secret}"))
    script = models.TextField()
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.os_families, list) or not self.os_families or \
                not all(isinstance(f, str) and f for f in self.os_families):
            raise ValidationError({"os_families": _("A non-empty list of OS family names.")})
        self.parameters = normalize_parameters(self.parameters)
        if not self.script.strip():
            raise ValidationError({"script": _("The script is empty.")})

    def fits(self, family: str) -> bool:
        return family in self.os_families

    @property
    def secret_names(self) -> set[str]:
        """The parameters declared secret: kept encrypted, passed to the run only, never shown."""
        return {p["name"] for p in self.parameters if p.get("secret")}

    def resolve(self, given: dict | None) -> dict:
        """The parameter values to run with: the given ones, then defaults. A missing required
        parameter or an unknown name raises ValidationError (keyed by parameter)."""
        given = dict(given or {})
        errors, values = {}, {}
        known = {p["name"] for p in self.parameters}
        for name in given:
            if name not in known:
                errors[name] = _("Unknown parameter.")
        for param in self.parameters:
            value = given.get(param["name"], param.get("default", ""))
            value = "" if value is None else str(value)
            if "\x00" in value or len(value) > 4096:
                errors[param["name"]] = _("At most 4096 characters, no NUL.")
            elif param.get("required") and not value:
                errors[param["name"]] = _("This parameter is required.")
            values[param["name"]] = value
        if errors:
            raise ValidationError(errors)
        return values


def normalize_parameters(parameters) -> list[dict]:
    """Check a parameter list's shape; returns it with every key present."""
    if not isinstance(parameters, list):
        raise ValidationError({"parameters": _("A list of parameters.")})
    result, seen = [], set()
    for item in parameters:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not PARAMETER_NAME.fullmatch(name) or name in RESERVED or name in seen:
            raise ValidationError({"parameters": _("Parameter names are unique lower-case identifiers "
                                                   "(not %(name)r).") % {"name": name}})
        seen.add(name)
        secret = item.get("secret", False)
        if not isinstance(secret, bool):
            raise ValidationError({"parameters": _("%(name)s: secret is true or false.") % {"name": name}})
        default = str(item.get("default", ""))
        if secret and default:
            # A default is shown to every customer with the recipe: it cannot be a secret.
            raise ValidationError({"parameters": _("%(name)s: a secret parameter has no default.") % {"name": name}})
        result.append({"name": name, "label": str(item.get("label") or name),
                       "required": bool(item.get("required", False)), "default": default, "secret": secret})
    return result
