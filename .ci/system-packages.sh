#!/usr/bin/env bash
# Install the Debian packages the project's tests and tools run, when their command is missing.
#
#   .ci/system-packages.sh                 # everything `make test` needs
#   .ci/system-packages.sh promtool        # only what these commands need
#
# CI runs as root on a fresh machine; a developer without root gets sudo. A test never skips
# because one of these is missing: this step installs it or fails loudly.
set -euo pipefail

# command -> Debian package
declare -A PACKAGE_OF=(
  [ffmpeg]=ffmpeg          # decoding of mp3/aac/http streams, the test radio's source client, codec augmentation
  [icecast2]=icecast2      # the test radio station (issue 18)
  [promtool]=prometheus    # alert-rule unit tests and config checks
  [docker-compose]=docker-compose  # deploy/check.sh validates docker-compose.yml (when the docker compose plugin is absent)
)

commands=("$@")
((${#commands[@]})) || commands=(ffmpeg icecast2 promtool)

missing=()
for cmd in "${commands[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${PACKAGE_OF[$cmd]:?no package known for $cmd}")
done
((${#missing[@]})) || exit 0

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "system-packages: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "==> apt-get install ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
