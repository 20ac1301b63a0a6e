#!/usr/bin/env bash
# The one test command. It never installs into the Python that calls it (run it from inside A1111's venv
# and that venv is left as it was): each leg has a virtual environment of its own, outside the checkout,
# created on first use and reused while its requirements file and Python stay the same.
#
#   bash tests/run_tests.sh [--leg current|users|forge] [pytest args...]
#
#   --leg current  (default) Python 3.11, torch 2.13.0 CPU and today's packages, gradio 3.41.2 as reForge and Forge
#                  Classic (requirements-test.txt); also lints with ruff
#   --leg users    the runtime of A1111 v1.10.x users: Python 3.10, torch 2.1.2, numpy 1.26, Pillow 9.5, gradio 3.41.2
#                  (requirements-test-users.txt)
#   --leg forge    the runtime of Forge and Forge Neo users: Python 3.10, torch 2.3.1, gradio 4.40.0
#                  (requirements-test-forge.txt)
#
# Each leg runs the suite once per stub WebUI (tests/harness.py): A1111, Forge and reForge with gradio 3; the forge
# leg runs the Forge stub only (the panel's tests there run on gradio 4).
#
# Environment: RIVAL_TEST_VENV_DIR (default ~/.cache/sd-webui-rival) holds the venvs;
# RIVAL_PY311 / RIVAL_PY310 name the interpreter of a leg when it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

leg=current
if [[ "${1:-}" == "--leg" ]]; then
    leg="${2:?--leg needs a value: current, users or forge}"
    shift 2
elif [[ "${1:-}" == --leg=* ]]; then
    leg="${1#--leg=}"
    shift
fi

case "$leg" in
    current)
        want=3.11
        req=requirements-test.txt
        candidates=("${RIVAL_PY311:-}" python3.11 python3 /root/.pyenv/versions/3.11.7/bin/python)
        ;;
    users)
        want=3.10
        req=requirements-test-users.txt
        candidates=("${RIVAL_PY310:-}" python3.10 /root/.pyenv/versions/3.10.13/bin/python)
        ;;
    forge)
        want=3.10
        req=requirements-test-forge.txt
        candidates=("${RIVAL_PY310:-}" python3.10 /root/.pyenv/versions/3.10.13/bin/python)
        ;;
    *)
        echo "run_tests.sh: unknown leg '$leg' (use --leg current, users or forge)" >&2
        exit 2
        ;;
esac

# The first candidate that runs and is the leg's Python version (a pyenv shim may exist and still fail).
py=""
for c in "${candidates[@]}"; do
    [[ -n "$c" ]] || continue
    if v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) && [[ "$v" == "$want" ]]; then
        py=$(command -v "$c")
        break
    fi
done
if [[ -z "$py" ]]; then
    echo "run_tests.sh: leg '$leg' needs Python $want; none found (tried: ${candidates[*]})." >&2
    echo "Install it, or point RIVAL_PY${want/./} at its interpreter." >&2
    exit 2
fi

# Nothing from the caller's Python may leak into the venv's.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV PIP_TARGET PIP_PREFIX PIP_USER

# The venv's name hashes the leg's requirements (with the files they include and their -c locks) and the exact
# Python version: a changed requirements file or interpreter gets a new venv.
pyver=$("$py" -c 'import sys; print(sys.version)')
reqs=("$req")
while read -r inc; do reqs+=("$inc"); done < <(sed -n 's/^-[rc][[:space:]]*//p' "$req")
hash=$( { echo "$pyver"; cat "${reqs[@]}"; echo "stable-diffusion-sdkit==2.1.5 --no-deps"; } | sha256sum | cut -c1-12)
venv_root="${RIVAL_TEST_VENV_DIR:-$HOME/.cache/sd-webui-rival}"
venv="$venv_root/venv-$leg-$hash"
vpy="$venv/bin/python"

if [[ ! -f "$venv/.complete" ]]; then
    echo "run_tests.sh: creating $venv (Python $want, $req); later runs reuse it"
    rm -rf "$venv"  # an unfinished earlier attempt
    mkdir -p "$venv_root"
    "$py" -m venv "$venv"
    # (the grep drops pip's notes about this machine's local package folders that lack a package)
    "$vpy" -m pip install -q -r "$req" 2>&1 | { grep -v "is neither a file nor a directory" || true; }
    # ldm (the UNet code A1111 uses for SD1/SD2) ships in this package; its own pins are not needed.
    "$vpy" -m pip install -q --no-deps stable-diffusion-sdkit==2.1.5 2>&1 | { grep -v "is neither a file nor a directory" || true; }
    touch "$venv/.complete"
fi
# A changed pin or Python leaves the leg's earlier venv behind (1.6 to 5.3 GB each): say so, and how to free it.
stale=$(find "$venv_root" -mindepth 1 -maxdepth 1 -name "venv-$leg-*" ! -path "$venv" | wc -l)
if [[ "$stale" -gt 0 ]]; then
    echo "run_tests.sh: $stale older venv(s) of leg $leg (earlier pins or Python) in $venv_root; remove them with:" \
        "find \"$venv_root\" -maxdepth 1 -name 'venv-$leg-*' ! -path \"$venv\" -exec rm -rf {} +"
fi
echo "run_tests.sh: leg $leg, $("$vpy" -c 'import sys, torch, numpy; print("Python %s, torch %s, numpy %s" % (sys.version.split()[0], torch.__version__, numpy.__version__))'), venv $venv"

if [[ "$leg" == current ]]; then
    "$vpy" -m ruff check .
    # The type check (pyproject.toml's [tool.mypy]: the host-free library strict, the WebUI layer and the host
    # adapters with every body checked); a type error fails the leg before any test runs.
    echo "run_tests.sh: mypy (pyproject.toml's [tool.mypy]: package rival_ext)"
    "$vpy" -m mypy
fi
# The suite once per stub WebUI (tests/harness.py): A1111 runs every test, Forge and reForge the host-neutral ones and
# their own (the rest is deselected there; a -k that selects nothing for one of them is not a failure).
stubs=(a1111 forge reforge)
if [[ "$leg" == forge ]]; then stubs=(forge); fi
status=0
for stub in "${stubs[@]}"; do
    echo "run_tests.sh: stub WebUI $stub"
    rc=0
    RIVAL_STUB=$stub "$vpy" -m pytest -q "$@" || rc=$?
    if [[ $rc -eq 5 && $stub != a1111 ]]; then rc=0; fi
    if [[ $rc -ne 0 ]]; then status=$rc; fi
done
exit $status
