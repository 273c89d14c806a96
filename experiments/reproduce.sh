#!/usr/bin/env bash
# Thin wrapper: experiments/reproduce.sh TABLE [--nproc 4] [--dry-run] [--overrides k=v ...]
set -euo pipefail
exec python "$(dirname "$0")/reproduce.py" "$@"
