#!/usr/bin/env bash
# Run test files against the source of an older commit: tests from TESTS (a folder holding
# tests/ and pyproject.toml), package from COMMIT's src/ (a detached worktree in /tmp).
# usage: docs/fault_suite_old_code/run_old.sh COMMIT TESTS pytest-args...
# e.g.   docs/fault_suite_old_code/run_old.sh f1d73e8 "$PWD" tests/test_fault_sam.py -k deleting
# (the adapter in this folder: copy it into tests/ first, it uses tests/conftest.py)
set -e
commit=$1; tests=$2; shift 2
repo=$(git rev-parse --show-toplevel)
tree=/tmp/old-$commit
[ -d "$tree" ] || git -C "$repo" worktree add --detach "$tree" "$commit" >/dev/null
cd "$tests"
export PYTHONPATH="$tree/src"
exec xvfb-run -a -s "-screen 0 1920x1200x24" "${PYTHON:-/work/main/.venv/bin/python}" -m pytest -p no:cacheprovider "$@"
