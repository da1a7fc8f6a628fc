#!/usr/bin/env bash
# Run the Dockerfile's build and run steps in plain venvs, since CI has no
# Docker engine: build wheels from a clean export of HEAD, install them with
# no index (as the runtime stage does), check that the image's default
# command refuses to serve 0.0.0.0 without authentication, start the server
# the way docs/deployment.md shows (--auth, policy and API keys), and pass
# the image's HEALTHCHECK command, run as Docker runs it: with the server's
# environment and no other. Also for a server serving TLS, on a port other
# than the default.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
servers=()
trap 'for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
git -C "$root" archive HEAD pyproject.toml constraints.txt README.md tools protos service domain_plugins | tar -x -C "$work/"
mkdir "$work/src" && mv "$work"/{pyproject.toml,constraints.txt,README.md,tools,protos,service,domain_plugins} "$work/src/"

# stage "build": the dependencies' wheels from pyproject.toml and constraints.txt alone, then Chronicle's
python3 -m venv "$work/build"
(cd "$work/src" && "$work/build/bin/python" tools/dependencies.py pyproject.toml >"$work/dependencies.txt")
(cd "$work/src" && PIP_CONSTRAINT="$work/src/constraints.txt" "$work/build/bin/pip" wheel --quiet --wheel-dir "$work/wheels" -r "$work/dependencies.txt")
(cd "$work/src" && PIP_CONSTRAINT="$work/src/constraints.txt" "$work/build/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/wheels" .)

# stage "runtime": installed with no index, what was installed written down as the image's constraints
python3 -m venv "$work/runtime"
"$work/runtime/bin/pip" install --quiet --no-index --find-links "$work/wheels" chronicle
"$work/runtime/bin/pip" freeze --exclude chronicle >"$work/image-constraints.txt"
for pinned in grpcio protobuf; do
    grep -qx "$(grep -i "^$pinned==" "$work/src/constraints.txt")" "$work/image-constraints.txt" \
        || { echo "the image's constraints do not pin $pinned as constraints.txt does"; exit 1; }
done
unzip -l "$work"/wheels/chronicle-*.whl >"$work/wheel-files"
for file in chronicle/protos/chronicle/v1/command.proto service/templates/plugin/domain.py.tmpl service/py.typed \
    service/store/postgres/migrations/0001_initial.sql service/store/sqlite/migrations/0001_initial.sql; do
    grep -q "$file" "$work/wheel-files" || { echo "the wheel does not carry $file"; exit 1; }
done

# The HEALTHCHECK's exec form, from the Dockerfile at HEAD, one argument a line.
git -C "$root" show HEAD:Dockerfile | python3 -c '
import json, sys
text = sys.stdin.read().replace("\\\n", " ")
line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
command = json.loads(line.split(" CMD ", 1)[1])
assert command[0] == "chronicle", command
print("\n".join(command[1:]))
' >"$work/healthcheck"
mapfile -t healthcheck <"$work/healthcheck"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

chronicle="$work/runtime/bin/chronicle"
# Arguments of 'serve' for the servers started below (set before each call).
serve_args=()

# serve_and_check NAME VAR=VALUE...: the server with that environment (and
# serve_args), as the image's entry point starts it; then the HEALTHCHECK
# with the same environment, polled as Docker polls it until it passes.
serve_and_check() {
    local name=$1 home="$work/home-$1"
    shift
    mkdir -p "$home"
    (cd "$home" && exec env -i PATH="$PATH" HOME="$home" "$@" "$chronicle" serve "${serve_args[@]}" >"$home/log" 2>&1) &
    servers+=($!)
    for _ in $(seq 50); do
        if (cd "$home" && env -i PATH="$PATH" HOME="$home" "$@" "$work/runtime/bin/chronicle" "${healthcheck[@]}" >/dev/null 2>&1); then
            echo "dockerfile steps: $name server healthy by the image's HEALTHCHECK (chronicle ${healthcheck[*]}; $*)"
            return 0
        fi
        sleep 0.2
    done
    echo "the $name server built by the Dockerfile's steps never passed the image's HEALTHCHECK; its log:"
    cat "$home/log"
    exit 1
}

# The image's environment: every interface, SQLite under the working directory.
port=$(free_port)
image_env=(CHRONICLE_LISTEN="0.0.0.0:$port" CHRONICLE_DATABASE_URL=sqlite:///data/chronicle.db CHRONICLE_EXAMPLE_PLUGINS=false)

# The image serves no example plugins.
if env -i PATH="$PATH" "${image_env[@]}" "$chronicle" plugins | grep -qw bank_account; then
    echo "the image's environment serves the example plugins"; exit 1
fi

# The image's default command (serve, authentication off) must refuse to start.
mkdir -p "$work/home-auth/data"
if refusal=$(cd "$work/home-auth" && timeout 60 env -i PATH="$PATH" HOME="$work/home-auth" "${image_env[@]}" "$chronicle" serve 2>&1); then
    echo "the image's default 'serve' started with authentication off on 0.0.0.0"; exit 1
fi
grep -q INSECURE_LISTEN <<<"$refusal" || { echo "the image's default 'serve' failed for another reason: $refusal"; exit 1; }

# Started the documented way: --auth, a policy and an API key made by 'chronicle apikey', private files.
mkdir "$work/home-auth/secrets"
cat >"$work/home-auth/secrets/policy.toml" <<'POLICY'
[roles.operator]
submit = ["*"]
read = ["*"]
subscribe = ["*"]
admin = true
POLICY
(umask 077; "$chronicle" apikey ops --role operator >"$work/home-auth/secrets/keys.toml" 2>"$work/apikey.err")
key=$(sed -n 's/^# the key .*: //p' "$work/apikey.err")
serve_args=(--auth --policy-file secrets/policy.toml --api-keys-file secrets/keys.toml)
serve_and_check auth "${image_env[@]}" CHRONICLE_EXAMPLE_PLUGINS=true  # the bank stands for a domain installed on top
if "$chronicle" submit acc-1 bank.v1.OpenAccount '{"owner": "ann"}' --server "127.0.0.1:$port" 2>"$work/anonymous.err"; then
    echo "an anonymous call was served by the image's server started with --auth"; exit 1
fi
grep -q UNAUTHENTICATED "$work/anonymous.err" || { echo "anonymous call: $(cat "$work/anonymous.err")"; exit 1; }
"$chronicle" submit acc-1 bank.v1.OpenAccount '{"owner": "ann"}' --server "127.0.0.1:$port" --token "$key" >/dev/null
echo "dockerfile steps: bare serve refused on 0.0.0.0; served with --auth on :$port (anonymous call refused, API key accepted)"
serve_args=()

# A self-signed certificate for a name the health check does not dial
# (it reaches the server through loopback), made with the runtime's own
# cryptography.
"$work/runtime/bin/python" - "$work/tls" <<'PY'
import datetime, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

folder = Path(sys.argv[1])
folder.mkdir()
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chronicle.internal")])
now = datetime.datetime.now(datetime.UTC)
certificate = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
    .add_extension(x509.SubjectAlternativeName([x509.DNSName("chronicle.internal")]), critical=False)
    .sign(key, hashes.SHA256())
)
(folder / "server.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
(folder / "server.key").write_bytes(
    key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
)
(folder / "server.key").chmod(0o600)  # the server refuses a key others can read
PY
serve_and_check tls CHRONICLE_LISTEN="127.0.0.1:$(free_port)" \
    CHRONICLE_TLS_CERT_FILE="$work/tls/server.pem" CHRONICLE_TLS_KEY_FILE="$work/tls/server.key"
