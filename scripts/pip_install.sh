#!/usr/bin/env bash
# `pip install ARGS` into the virtual environment VENV, through uv where it can be had, else pip.
#
#   bash scripts/pip_install.sh VENV ARGS...        (ABSCOT_INSTALLER=pip: always pip)
#
# uv resolves to the same versions as pip here and installs several times faster (bench/README.md,
# "Installing"). It does not read pip's configuration, so the find-links and extra index URLs pip
# is configured with (environment or pip.conf) are handed on, and uv picks the best version across
# all indexes as pip does (a find-links directory's CPU torch wheel then wins, as with pip).
set -euo pipefail
VENV=$1
shift
if [[ "${ABSCOT_INSTALLER:-uv}" == uv ]] && { test -x "$VENV/bin/uv" || "$VENV/bin/pip" install -q uv; }; then
    setting() { "$VENV/bin/pip" config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | tail -1; }
    links=$(setting find-links)
    extra=$(setting extra-index-url)
    [[ -n "$links" && -z "${UV_FIND_LINKS:-}" ]] && export UV_FIND_LINKS=${links// /,}
    [[ -n "$extra" && -z "${UV_EXTRA_INDEX_URL:-}" ]] && export UV_EXTRA_INDEX_URL=$extra
    export UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}
    exec "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "$@"
fi
exec "$VENV/bin/pip" install -q "$@"
