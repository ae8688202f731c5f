#!/usr/bin/env bash
# The shell step of action.yml: install cas if needed, run put or get, set the output.
# Inputs come as INPUT_* variables (see action.yml); the test suite runs this script too.
set -euo pipefail

if ! command -v cas >/dev/null 2>&1; then
    python3 -m pip install --quiet "${CAS_ACTION_SOURCE:?}[gcs]"
fi

args=()
if [[ -n "${INPUT_STORE:-}" ]]; then
    args+=(--store "$INPUT_STORE")
fi

case "${INPUT_COMMAND:-}" in
put)
    if [[ -n "${INPUT_REF:-}" ]]; then
        args+=(--ref "$INPUT_REF")
    fi
    while IFS= read -r pattern; do
        [[ -n "$pattern" ]] && args+=(--exclude "$pattern")
    done <<<"${INPUT_EXCLUDE:-}"
    while IFS= read -r label; do
        [[ -n "$label" ]] && args+=(--label "$label")
    done <<<"${INPUT_LABELS:-}"
    manifest=$(cas put "${args[@]}" "${INPUT_PATH:?path is required}")
    ;;
get)
    target="${INPUT_MANIFEST:?manifest is required for get}"
    cas get "${args[@]}" "$target" "${INPUT_PATH:?path is required}"
    manifest=$(cas show --json "${args[@]}" "$target" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    ;;
*)
    echo "cas action: command must be put or get, not '${INPUT_COMMAND:-}'" >&2
    exit 2
    ;;
esac

echo "manifest=$manifest" >>"${GITHUB_OUTPUT:-/dev/stdout}"
