#!/usr/bin/env bash
# Run the Dockerfile's build and run steps in plain venvs, since CI has no
# Docker engine: build wheels from a clean export of HEAD, install them with
# no index (as the runtime stage does), check that the image's default
# command refuses to serve 0.0.0.0 without authentication, start the server
# the way docs/deployment.md shows (--auth, policy and API keys), and pass
# the image's HEALTHCHECK command.
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
chronicle="$work/runtime/bin/chronicle"
mkdir -p "$work/home/data"
# The image's environment: every interface, SQLite under the working directory.
image_env=(env CHRONICLE_LISTEN="0.0.0.0:$port" CHRONICLE_DATABASE_URL=sqlite:///data/chronicle.db)

# The image's default command (serve, authentication off) must refuse to start.
if refusal=$(cd "$work/home" && timeout 60 "${image_env[@]}" "$chronicle" serve 2>&1); then
    echo "the image's default 'serve' started with authentication off on 0.0.0.0"; exit 1
fi
grep -q INSECURE_LISTEN <<<"$refusal" || { echo "the image's default 'serve' failed for another reason: $refusal"; exit 1; }

# Started the documented way: --auth, a policy and an API key made by 'chronicle apikey', private files.
mkdir "$work/home/secrets"
cat >"$work/home/secrets/policy.toml" <<'POLICY'
[roles.operator]
submit = ["*"]
read = ["*"]
subscribe = ["*"]
admin = true
POLICY
(umask 077; "$chronicle" apikey ops --role operator >"$work/home/secrets/keys.toml" 2>"$work/apikey.err")
key=$(sed -n 's/^# the key .*: //p' "$work/apikey.err")
(cd "$work/home" && exec "${image_env[@]}" "$chronicle" serve --auth \
    --policy-file secrets/policy.toml --api-keys-file secrets/keys.toml) &
server=$!
for _ in $(seq 50); do
    if "$chronicle" health --server "127.0.0.1:$port" --timeout 3 >/dev/null 2>&1; then
        if "$chronicle" submit acc-1 bank.v1.OpenAccount '{"owner": "ann"}' --server "127.0.0.1:$port" 2>"$work/anonymous.err"; then
            echo "an anonymous call was served by the image's server started with --auth"; exit 1
        fi
        grep -q UNAUTHENTICATED "$work/anonymous.err" || { echo "anonymous call: $(cat "$work/anonymous.err")"; exit 1; }
        "$chronicle" submit acc-1 bank.v1.OpenAccount '{"owner": "ann"}' --server "127.0.0.1:$port" --token "$key" >/dev/null
        echo "dockerfile steps: wheel built, installed without an index; bare serve refused on 0.0.0.0;" \
            "served with --auth on :$port (healthy, anonymous call refused, API key accepted)"
        exit 0
    fi
    sleep 0.2
done
echo "the server built by the Dockerfile's steps never became healthy"
exit 1
