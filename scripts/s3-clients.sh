#!/usr/bin/env bash
# Installs the S3 clients that scripts/gateway-clients.sh drives: boto3 and the aws CLI from
# PyPI into a virtualenv, pinned and hashed in scripts/s3-clients/requirements.txt, and rclone
# from Debian's packages when there is no `rclone` yet. Idempotent: when the virtualenv was
# made from the same requirements file and rclone runs, it does nothing. The virtualenv is
# ${FERRY_TOOLS_DIR:-$PWD/target/tools}/s3-clients (its bin/ holds python, aws); the last
# line printed is that bin directory. Needs python3 with venv, network access to PyPI and
# (for rclone) Debian's archive, and root or sudo for apt-get.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="${FERRY_TOOLS_DIR:-$PWD/target/tools}/s3-clients"
requirements="$here/s3-clients/requirements.txt"

# The virtualenv: made anew when the requirements changed since it was made (its stamp is a
# copy of the file it was installed from).
if ! cmp -s "$requirements" "$venv/requirements.installed" || [ ! -x "$venv/bin/aws" ]; then
    echo "s3-clients: installing boto3 and awscli into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --require-hashes --only-binary=:all: -r "$requirements"
    cp "$requirements" "$venv/requirements.installed"
fi

if ! rclone version >/dev/null 2>&1; then
    echo "s3-clients: installing rclone from Debian's packages" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    # A machine whose package lists were never fetched finds nothing: fetch them then.
    $sudo apt-get install -y rclone >&2 || { $sudo apt-get update >&2 && $sudo apt-get install -y rclone >&2; }
fi

echo "$venv/bin"
