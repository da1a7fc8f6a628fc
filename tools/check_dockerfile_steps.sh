#!/usr/bin/env bash
# Run the Dockerfile's build and run steps in plain venvs, since CI has no
# Docker engine: build wheels from a clean export of HEAD, install them with
# no index (as the runtime stage does), start the server as the image would,
# and pass the image's HEALTHCHECK command.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
git -C "$root" archive HEAD pyproject.toml constraints.txt README.md tools protos service domain_plugins | tar -x -C "$work/"
mkdir "$work/src" && mv "$work"/{pyproject.toml,constraints.txt,README.md,tools,protos,service,domain_plugins} "$work/src/"

# stage "build"
python3 -m venv "$work/build"
(cd "$work/src" && PIP_CONSTRAINT="$work/src/constraints.txt" "$work/build/bin/pip" wheel --quiet --wheel-dir "$work/wheels" .)

# stage "runtime"
python3 -m venv "$work/runtime"
"$work/runtime/bin/pip" install --quiet --no-index --find-links "$work/wheels" chronicle
unzip -l "$work"/wheels/chronicle-*.whl >"$work/wheel-files"
for file in chronicle/protos/chronicle/v1/command.proto service/templates/plugin/domain.py.tmpl service/py.typed; do
    grep -q "$file" "$work/wheel-files" || { echo "the wheel does not carry $file"; exit 1; }
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$work/home"
(cd "$work/home" && exec env CHRONICLE_LISTEN="127.0.0.1:$port" "$work/runtime/bin/chronicle" serve) &
server=$!
for _ in $(seq 50); do
    if "$work/runtime/bin/chronicle" health --server "127.0.0.1:$port" --timeout 3 >/dev/null 2>&1; then
        echo "dockerfile steps: wheel built, installed without an index, server healthy on :$port"
        exit 0
    fi
    sleep 0.2
done
echo "the server built by the Dockerfile's steps never became healthy"
exit 1
