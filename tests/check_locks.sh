#!/usr/bin/env bash
# Check that every leg's requirements (with its pip-freeze lock) resolve from PyPI alone, whatever this machine's
# pip configuration adds (local wheel stores, extra indexes, constraints): a dry run of each leg against PyPI,
# isolated from pip's config files and PIP_* variables. Needs the network; installs nothing.
#
#   bash tests/check_locks.sh
#
# RIVAL_PY311 / RIVAL_PY310 name the interpreters as for tests/run_tests.sh.
set -uo pipefail
cd "$(dirname "$0")/.."

find_python() {  # want, candidates...
    local want=$1 c v
    shift
    for c in "$@"; do
        [[ -n "$c" ]] || continue
        if v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) && [[ "$v" == "$want" ]]; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

status=0
for leg in current users forge; do
    if [[ "$leg" == current ]]; then
        req=requirements-test.txt
        py=$(find_python 3.11 "${RIVAL_PY311:-}" python3.11 python3 /root/.pyenv/versions/3.11.7/bin/python)
    else
        req=requirements-test-$leg.txt
        py=$(find_python 3.10 "${RIVAL_PY310:-}" python3.10 /root/.pyenv/versions/3.10.13/bin/python)
    fi
    if [[ -z "$py" ]]; then
        echo "check_locks.sh: leg $leg: no Python for it found" >&2
        status=1
        continue
    fi
    for what in "-r $req" "--no-deps stable-diffusion-sdkit==2.1.5"; do
        echo "+ PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $py -m pip install --dry-run --ignore-installed --isolated" \
            "--index-url https://pypi.org/simple $what"
        # shellcheck disable=SC2086
        out=$(PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$py" -m pip install --dry-run --ignore-installed --isolated \
            --disable-pip-version-check --index-url https://pypi.org/simple $what 2>&1)
        rc=$?
        grep -E "^(Would install|ERROR)" <<<"$out"
        echo "  -> exit $rc"
        [[ $rc -eq 0 ]] || status=1
    done
done
[[ $status -eq 0 ]] && echo "check_locks.sh: every leg resolves from PyPI alone" || echo "check_locks.sh: FAILED" >&2
exit $status
