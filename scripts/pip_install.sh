#!/usr/bin/env bash
# `pip install ARGS` into the virtual environment VENV, through uv where it can be had, else pip.
#
#   bash scripts/pip_install.sh VENV ARGS...        (ABSCOT_INSTALLER=pip: always pip)
#
# uv installs the same versions and wheels as pip here, several times faster (bench/README.md,
# "Installing"). It does not read pip's configuration: the find-links locations pip is configured
# with (environment or pip.conf) are handed on, and uv picks the best version across them and the
# package index as pip does (a find-links directory's CPU torch wheel then wins, as with pip).
# pip's extra index URLs are not handed on: where two indexes hold the same version, uv takes the
# first one's files only, while pip picks the best wheel of all (on the CI machines a local mirror
# held only multiprocess's py310 wheel, whose fork_exec call breaks on Python 3.11).
set -euo pipefail
VENV=$1
shift
if [[ "${ABSCOT_INSTALLER:-uv}" == uv ]] && { test -x "$VENV/bin/uv" || "$VENV/bin/pip" install -q uv; }; then
    setting() { "$VENV/bin/pip" config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | tail -1; }
    links=$(setting find-links)
    [[ -n "$links" && -z "${UV_FIND_LINKS:-}" ]] && export UV_FIND_LINKS=${links// /,}
    export UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}
    exec "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "$@"
fi
exec "$VENV/bin/pip" install -q "$@"
