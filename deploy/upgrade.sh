#!/usr/bin/env bash
# The panel's upgrade, run by `make upgrade` after `git pull` (README "Production"):
#   1. the panel's own backup (manage.py backup_panel), taken with the code the running panel
#      was deployed from (a temporary git worktree of it), since the new code may not read the
#      database before its migrations ran; if it fails, the upgrade stops: nothing changed yet
#   2. dependencies: requirements.txt (the production ones), noVNC and uPlot (npm ci) when
#      package-lock.json changed or either is missing
#   3. translations (compilemessages) and static files (collectstatic)
#   4. migrations
#   5. systemd's units refreshed from deploy/systemd/ when they changed, and restarted, when
#      systemd runs this host's services
# Idempotent: after whatever stopped it is fixed, run it again. Settings come from
# /etc/panel/panel.env (PANEL_ENV_FILE), as for the units; the manage.py, pip and npm steps run
# as the checkout's owner (the panel user), so every file they write stays the panel's.
# Knobs for other layouts: PANEL_ENV_FILE, PANEL_VENV, PANEL_UNITS, PANEL_UNIT_DIR,
# PANEL_UPGRADE_BACKUP_DIR, PANEL_SYSTEMD=auto|yes|no.
set -euo pipefail

say() { echo "upgrade: $*"; }
die() { echo "upgrade: ERROR: $*" >&2; exit 1; }

PANEL_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$PANEL_HOME"
VENV=${PANEL_VENV:-$PANEL_HOME/.venv}
UNITS=${PANEL_UNITS:-panel-web.service panel-worker.service}
UNIT_DIR=${PANEL_UNIT_DIR:-/etc/systemd/system}
SYSTEMD=${PANEL_SYSTEMD:-auto}

# --- the environment of the units ------------------------------------------------------------
# Read as systemd reads an EnvironmentFile (KEY=value, optional quotes), never executed.
load_env() {
  local line key value n=0
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line=${line#"${line%%[![:space:]]*}"}
    case "$line" in '' | '#'* | ';'*) continue ;; esac
    [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "$1:$n: not KEY=value: $line"
    key=${line%%=*}
    value=${line#*=}
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
    export "$key=$value"
  done <"$1"
}
if [ -n "${PANEL_ENV_FILE:-}" ]; then
  [ -r "$PANEL_ENV_FILE" ] || die "cannot read PANEL_ENV_FILE=$PANEL_ENV_FILE"
  load_env "$PANEL_ENV_FILE"
elif [ -r /etc/panel/panel.env ]; then
  load_env /etc/panel/panel.env
else
  say "no /etc/panel/panel.env: the settings are this shell's environment and the defaults"
fi
# Explicit, so the backup's worktree (another BASE_DIR) sees the very same data folder.
export PANEL_DATA_DIR=${PANEL_DATA_DIR:-$PANEL_HOME/data}
BACKUP_DIR=${PANEL_UPGRADE_BACKUP_DIR:-$PANEL_DATA_DIR/backups}

# --- who runs the steps ----------------------------------------------------------------------
OWNER=$(stat -c %U "$PANEL_HOME")
if [ "$(id -u)" -eq 0 ] && [ "$OWNER" != root ]; then
  as_owner() { runuser -u "$OWNER" -- "$@"; }
else
  as_owner() { "$@"; }
fi

as_owner git -C "$PANEL_HOME" rev-parse --git-dir >/dev/null 2>&1 || die "$PANEL_HOME is not a git checkout"
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (python3 -m venv $VENV, as $OWNER)"
PY=$VENV/bin/python
# One upgrade at a time (a lock on the checkout folder itself: nothing to clean up).
exec 9<"$PANEL_HOME"
flock -n 9 || die "another upgrade is running"

# git runs as the owner: as root in another user's checkout it refuses ("dubious ownership").
HEAD=$(as_owner git rev-parse HEAD)
RECORD=$PANEL_DATA_DIR/deployed-revision
STEP="preparing"
WORKTREE=""
cleanup() {
  local rc=$?
  if [ -n "$WORKTREE" ]; then
    as_owner git -C "$PANEL_HOME" worktree remove --force "$WORKTREE/code" >/dev/null 2>&1 || true
    rm -rf "$WORKTREE"
  fi
  if [ "$rc" -ne 0 ] && [ "$STEP" != preparing ] && [ "$STEP" != backup ]; then
    echo "upgrade: stopped at \"$STEP\" (exit $rc); the backup taken first is ${BACKUP_FILE:-none}." \
         "Fix the cause and run make upgrade again." >&2
  fi
}
trap cleanup EXIT

# --- 1. the panel's own backup ----------------------------------------------------------------
STEP=backup
# The deployed revision: recorded by the last upgrade, else where `git pull` came from.
DEPLOYED=$(cat "$RECORD" 2>/dev/null || as_owner git rev-parse -q --verify ORIG_HEAD 2>/dev/null || true)
CODE=$PANEL_HOME
if [ -n "$DEPLOYED" ] && [ "$DEPLOYED" != "$HEAD" ] && as_owner git cat-file -e "$DEPLOYED^{commit}" 2>/dev/null; then
  WORKTREE=$(as_owner mktemp -d "${TMPDIR:-/tmp}/panel-upgrade.XXXXXX")
  as_owner git -C "$PANEL_HOME" worktree add --detach -q "$WORKTREE/code" "$DEPLOYED"
  CODE=$WORKTREE/code
  say "1/5 the panel's own backup, with the deployed code (${DEPLOYED:0:12}; now ${HEAD:0:12})"
else
  say "1/5 the panel's own backup"
fi
BACKUP_FILE=$BACKUP_DIR/before-upgrade-$(date -u +%Y%m%dT%H%M%SZ)-${HEAD:0:12}.panelbackup
if ! (as_owner mkdir -p "$BACKUP_DIR" && cd "$CODE" && as_owner "$PY" manage.py backup_panel "$BACKUP_FILE"); then
  die "the panel's own backup failed (see above): the upgrade stopped before changing anything"
fi
say "backup: $BACKUP_FILE (restore_panel reads it, with the backup key)"

# --- 2. dependencies --------------------------------------------------------------------------
STEP="dependencies"
say "2/5 dependencies (requirements.txt)"
as_owner "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
if [ -f package-lock.json ]; then
  if [ ! -f node_modules/.installed ] || [ package-lock.json -nt node_modules/.installed ] \
     || [ ! -f node_modules/@novnc/novnc/core/rfb.js ] || [ ! -f node_modules/uplot/dist/uPlot.iife.min.js ]; then
    command -v npm >/dev/null || die "npm is missing (apt install npm): noVNC and uPlot come from npm"
    say "noVNC and uPlot (npm ci)"
    as_owner npm ci --no-audit --no-fund --silent
    as_owner touch node_modules/.installed
  fi
fi

# --- 3. translations and static files ---------------------------------------------------------
STEP="translations and static files"
say "3/5 translations and static files"
as_owner "$PY" manage.py compilemessages --ignore=.venv --ignore=.cache -v 0
as_owner "$PY" manage.py collectstatic --noinput -v 0

# --- 4. migrations ----------------------------------------------------------------------------
STEP="migrations"
say "4/5 migrations"
as_owner "$PY" manage.py migrate --noinput

# --- 5. restart -------------------------------------------------------------------------------
STEP="restart"
case "$SYSTEMD" in
  auto) [ -d /run/systemd/system ] && SYSTEMD=yes || SYSTEMD=no ;;
  yes | no) ;;
  *) die "PANEL_SYSTEMD is auto, yes or no, not $SYSTEMD" ;;
esac
if [ "$SYSTEMD" = yes ]; then
  changed=()
  for unit in deploy/systemd/*; do
    installed=$UNIT_DIR/$(basename "$unit")
    if [ -f "$installed" ] && ! cmp -s "$unit" "$installed"; then
      install -m 0644 "$unit" "$installed"
      changed+=("$(basename "$unit")")
    fi
  done
  if [ "${#changed[@]}" -gt 0 ]; then
    say "unit files updated: ${changed[*]}"
    systemctl daemon-reload
  fi
  restart=()
  for unit in $UNITS; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
      restart+=("$unit")
    fi
  done
  if [ "${#restart[@]}" -gt 0 ]; then
    say "5/5 restarting ${restart[*]}"
    systemctl restart "${restart[@]}"
  else
    say "5/5 none of $UNITS is enabled or running: start the panel yourself"
  fi
else
  say "5/5 systemd does not run this host's services: restart the panel yourself (manage.py runpanel)"
fi

printf '%s\n' "$HEAD" | as_owner tee "$RECORD" >/dev/null
STEP=done
say "done: the panel runs ${HEAD:0:12}"
