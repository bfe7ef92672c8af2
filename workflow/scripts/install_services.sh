#!/usr/bin/env bash
# Install the system services that tests/services/ start on loopback: a single-node SLURM
# (slurmctld + slurmd + munge) and PostgreSQL, plus psycopg2-binary in .venv.
#
#   sudo bash workflow/scripts/install_services.sh     (CI runs it before `make test`)
#
# Idempotent: packages already present are skipped; nothing is started or enabled here (the
# tests start their own daemons in temporary folders and stop them afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."

PACKAGES=(slurm-wlm slurm-client munge postgresql postgresql-contrib)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "install_services.sh: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    # Debian starts the daemons on install where systemd runs; the tests use their own.
    for svc in slurmctld slurmd munge postgresql; do
        $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
else
    echo "install_services.sh: system packages present"
fi

# the PostgreSQL driver MLflow uses for postgresql:// URIs (pinned in pyproject.toml)
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import psycopg2' 2>/dev/null; then
    pin=$(grep -o '"psycopg2-binary==[^"]*"' pyproject.toml | tr -d '"')
    .venv/bin/python -m pip install -q --disable-pip-version-check "${pin:-psycopg2-binary}"
fi
echo "install_services.sh: done (slurm $(dpkg-query -W -f="${Version}" slurmctld 2>/dev/null || echo missing), \
$(ls /usr/lib/postgresql 2>/dev/null | sed 's/^/postgresql /' | head -1))"
bash workflow/scripts/install_profile.sh || true
