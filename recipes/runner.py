"""The two small shell scripts every install config runs at its end.

The runner runs the chosen recipe with its parameters; the call-back script reports the
recipe's output and exit code to the panel, which is how the panel learns that the install is
complete. Both reach the config as base64, and every value inside them is shell-quoted, so no
parameter can change what runs.
"""

import base64
import shlex

LOG, EXIT = "/var/log/panel-recipe.log", "/var/log/panel-recipe.exit"
# The panel keeps this much of a recipe's output.
OUTPUT_LIMIT = 64 * 1024


def runner_script(recipe, params: dict) -> str:
    """Run `recipe` (None: nothing) with `params` as upper-case environment variables."""
    lines = ["#!/bin/sh", "# Written by the panel: runs the post-install recipe.", "mkdir -p /var/log"]
    if recipe is None:
        lines += [f": >{LOG}", f"echo 0 >{EXIT}", "exit 0"]
        return "\n".join(lines) + "\n"
    for name, value in sorted(params.items()):
        lines.append(f"{name.upper()}={shlex.quote(value)}; export {name.upper()}")
    script = base64.b64encode(recipe.script.replace("\r\n", "\n").encode()).decode()
    lines += [
        f"# recipe: {recipe.slug}",
        "f=/root/panel-recipe",
        "mkdir -p /root",
        f"echo {script} | base64 -d >\"$f\"",
        'chmod 700 "$f"',
        # A script with its own #! line runs with that interpreter, any other one with sh.
        f'if head -c 2 "$f" | grep -q "#!"; then "$f" >{LOG} 2>&1; else sh "$f" >{LOG} 2>&1; fi',
        "code=$?",
        f'echo "$code" >{EXIT}',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def callback_script(url: str) -> str:
    """POST the recipe's log (its last 64 KiB) and exit code to `url`; retry for ~5 minutes."""
    q = shlex.quote
    return "\n".join([
        "#!/bin/sh",
        "# Written by the panel: tells it the install is complete.",
        f"code=$(cat {EXIT} 2>/dev/null || echo 0)",
        f"tail -c {OUTPUT_LIMIT} {LOG} >/tmp/panel-callback.body 2>/dev/null || : >/tmp/panel-callback.body",
        f'url={q(url)}"?exit=$code"',
        "limit=; command -v timeout >/dev/null 2>&1 && limit='timeout 30'",
        "i=0",
        "while [ $i -lt 100 ]; do",
        "  if command -v curl >/dev/null 2>&1; then",
        "    curl -fsS -m 20 -X POST -H 'Content-Type: text/plain' --data-binary @/tmp/panel-callback.body \"$url\""
        " >/dev/null && exit 0",
        "  else",
        # (busybox's wget -T crashes in some builds: the time limit comes from timeout(1))
        "    $limit wget -q -O /dev/null --header 'Content-Type: text/plain' --post-file=/tmp/panel-callback.body"
        " \"$url\" && exit 0",
        "  fi",
        "  i=$((i + 1)); sleep 3",
        "done",
        "exit 1",
    ]) + "\n"
