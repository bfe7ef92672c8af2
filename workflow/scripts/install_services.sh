#!/usr/bin/env bash
# Install the system services that tests/services/ start on loopback: a single-node SLURM
# (slurmctld + slurmd + munge) and PostgreSQL, plus psycopg2-binary in .venv.
#
#   sudo bash workflow/scripts/install_services.sh     (CI runs it before `make test`)
#
# Idempotent: packages already present are skipped. A clean host: nothing this machine already
# ran is touched. Which of the services were active or enabled is read BEFORE installing; after
# the install, a daemon that Debian's postinst started (or enabled) is stopped (or disabled)
# again only if it was not running (or enabled) before. A PostgreSQL or SLURM the host already
# ran keeps running. (The tests start their own daemons in temporary folders.)
set -euo pipefail
cd "$(dirname "$0")/../.."

# chromium: the headless browser of tests/services/test_browser.py
PACKAGES=(slurm-wlm slurm-client munge postgresql postgresql-contrib chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
SERVICES=(slurmctld slurmd munge postgresql)
SYSTEMD_RUN_DIR=${SYSTEMD_RUN_DIR:-/run/systemd/system}  # where a booted systemd lives
have_systemd() { [ -d "$SYSTEMD_RUN_DIR" ] && command -v systemctl >/dev/null 2>&1; }
declare -A was_active=() was_enabled=()
if have_systemd; then
    for svc in "${SERVICES[@]}"; do
        was_active[$svc]=$(systemctl is-active "$svc" 2>/dev/null || true)
        was_enabled[$svc]=$(systemctl is-enabled "$svc" 2>/dev/null || true)
    done
fi

if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "install_services.sh: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    # Debian starts (and enables) the daemons on install where systemd runs; undo only that.
    if have_systemd; then
        for svc in "${SERVICES[@]}"; do
            if [ "${was_active[$svc]}" != "active" ] \
                    && [ "$(systemctl is-active "$svc" 2>/dev/null || true)" = "active" ]; then
                echo "install_services.sh: stopping $svc (started by its package install)"
                $SUDO systemctl stop "$svc" || true
            fi
            if [ "${was_enabled[$svc]}" != "enabled" ] \
                    && [ "$(systemctl is-enabled "$svc" 2>/dev/null || true)" = "enabled" ]; then
                echo "install_services.sh: disabling $svc (enabled by its package install)"
                $SUDO systemctl disable "$svc" >/dev/null 2>&1 || true
            fi
        done
    fi
else
    echo "install_services.sh: system packages present (services left as they are)"
fi

# the PostgreSQL driver MLflow uses for postgresql:// URIs (pinned in pyproject.toml)
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import psycopg2' 2>/dev/null; then
    pin=$(grep -o '"psycopg2-binary==[^"]*"' pyproject.toml | tr -d '"')
    .venv/bin/python -m pip install -q --disable-pip-version-check "${pin:-psycopg2-binary}"
fi
echo "install_services.sh: done (slurm $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo missing), \
$(ls /usr/lib/postgresql 2>/dev/null | sed 's/^/postgresql /' | head -1))"
bash workflow/scripts/install_profile.sh || true
