#!/usr/bin/env bash
# One command for the compose deployment: creates the shared secrets once (random, mode
# 0600, never committed), then builds and starts PostgreSQL, two replicas and nginx.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# The directory is private (0700); the files are 0644 so the container's non-root user can
# read the bind-mounted secrets, while other host users cannot reach them.
mkdir -p secrets && chmod 700 secrets
for name in api-token pseudonym-key session-key; do
  [ -s "secrets/$name" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "secrets/$name"
  chmod 644 "secrets/$name"
done
docker compose -f compose.yaml up -d --build "$@"
echo "catsdogs on http://127.0.0.1:${CATSDOGS_PORT:-8000}/  (API token in deploy/secrets/api-token)"
