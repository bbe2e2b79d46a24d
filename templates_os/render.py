"""Install configs rendered in a sandbox.

Config templates (kickstart, preseed, cloud-init user-data, kernel command lines) are Jinja2
templates run in Jinja2's SandboxedEnvironment: no attribute access to Python internals, no
imports. On top of that, every value a template prints must be either a value the panel made
itself (`Trusted`: hashes, URLs, base64 blobs) or pass through a quoting filter that fits the
place it goes (`sh`, `yaml`, `b64`). A plain token (letters, digits and `._:/@+=,%-`) may be
printed as it is. Anything else fails the rendering: a hostile hostname, SSH key or recipe
parameter cannot leave its place in the file, even in a carelessly written template.
"""

import base64
import json
import re
import shlex

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._:/@+=,%-]*")


class Trusted:
    """A string the panel produced, safe to print where the template puts it.

    Not a `str`: a str subclass keeps its type through the sandbox's `.format()` and
    `.format_map()` (which return `type(s)(result)`), so `{{ ("{}"|yaml).format(hostname) }}`
    printed a hostname unquoted. This wrapper has no string methods at all; whatever a template
    makes from it (`~`, `%`, filters, `|string`) is a plain str that `_finalize` checks again.
    """

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = str(text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Trusted({self.text!r})"

    def __bool__(self) -> bool:
        return bool(self.text)

    def __eq__(self, other) -> bool:
        return isinstance(other, Trusted) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class RenderError(Exception):
    """A config template that does not render (a broken template, or an unquoted value)."""


def _sh(value) -> Trusted:
    """One shell word, single-quoted."""
    return Trusted(shlex.quote(str(value)))


# Characters YAML does not take as they are (C1 controls, line separators, surrogates, BOM).
_YAML_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


def yaml_scalar(value) -> str:
    """A YAML scalar: a JSON string (JSON is YAML) keeping characters beyond the BMP as they are,
    which JSON's ASCII escapes would turn into surrogate pairs YAML reads as two characters."""
    if not isinstance(value, (int, float, bool, list, dict)) and value is not None:
        value = str(value)
    text = json.dumps(value, ensure_ascii=False, default=str)  # a Trusted inside: its text
    return _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _yaml(value) -> Trusted:
    return Trusted(yaml_scalar(value))


def _b64(value) -> Trusted:
    data = value if isinstance(value, bytes) else str(value).encode()
    return Trusted(base64.b64encode(data).decode())


def _finalize(value):
    if isinstance(value, Trusted):
        return value.text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    if PLAIN_TOKEN.fullmatch(text):
        return text
    raise TemplateError(f"the value {text[:40]!r} is printed without a quoting filter (sh, yaml or b64)")


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, finalize=_finalize, autoescape=False,
                               keep_trailing_newline=True)
    env.filters.update(sh=_sh, yaml=_yaml, b64=_b64)
    return env


_ENV = _environment()


def render(source: str, context: dict) -> str:
    """Render a config template; RenderError says why it could not be."""
    try:
        return _ENV.from_string(source).render(**context)
    except TemplateError as exc:
        raise RenderError(str(exc)) from exc
    except Exception as exc:  # a sandbox violation or a type error inside the template
        raise RenderError(f"{exc.__class__.__name__}: {exc}") from exc


def check_syntax(source: str) -> str:
    """'' when the template parses, else the reason (for the template scan)."""
    try:
        _ENV.parse(source)
    except TemplateError as exc:
        return f"line {getattr(exc, 'lineno', '?')}: {exc}"
    return ""
