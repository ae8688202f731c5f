#!/usr/bin/env bash
# Install the tools benchmarks/compare.py measures beside cas (Debian/Ubuntu, as root or
# with sudo). compare.py skips any of them that is missing, with a note in its report.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
$SUDO apt-get install -y --no-install-recommends zstd tar time casync restic borgbackup
casync --version | head -1
restic version
borg --version
