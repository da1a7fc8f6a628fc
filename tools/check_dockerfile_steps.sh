#!/usr/bin/env bash
# Run the Dockerfile's build and run steps in plain venvs, since CI has no
# Docker engine: build wheels from a clean export of HEAD, install them with
# no index (as the runtime stage does), start the server as the image would,
# and pass the image's HEALTHCHECK command, run as Docker runs it: with the
# server's environment and no other. Twice: a plaintext server, and one
# serving TLS, both on a port other than the default.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
servers=()
trap 'for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
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

# serve_and_check NAME VAR=VALUE...: the server with that environment, as
# the image's entry point starts it; then the HEALTHCHECK with the same
# environment, polled as Docker polls it until it passes.
serve_and_check() {
    local name=$1 home="$work/home-$1"
    shift
    mkdir "$home"
    (cd "$home" && exec env -i PATH="$PATH" HOME="$home" "$@" "$work/runtime/bin/chronicle" serve >"$home/log" 2>&1) &
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

serve_and_check plaintext CHRONICLE_LISTEN="127.0.0.1:$(free_port)"

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
PY
serve_and_check tls CHRONICLE_LISTEN="127.0.0.1:$(free_port)" \
    CHRONICLE_TLS_CERT_FILE="$work/tls/server.pem" CHRONICLE_TLS_KEY_FILE="$work/tls/server.key"
