#!/usr/bin/env bash
# Installs Debian packages quietly, through sudo unless run as root. The other scripts call it
# for what they need and do not find. Usage: scripts/apt-install.sh [--update] PACKAGE...
set -euo pipefail
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo
if [ "${1:-}" = --update ]; then
  shift
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq "$@" >/dev/null
