#!/usr/bin/env bash
# vaeproxy and nginx side by side: the load bench's hit scenarios against
# both, alternating rounds, same origin, same load generator. Installs nginx
# from Debian if it is missing. The last line is `ratio rps=R p99=P` for the
# latent-hit scenario (vaeproxy / nginx).
#
#   benches/compare-nginx.sh [load bench flags, e.g. --seconds 10 --rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
NGINX=$(command -v nginx || true)
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
if [ -z "$NGINX" ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nginx-light \
        || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nginx
    # Debian starts the packaged service; this bench runs its own instance.
    $SUDO service nginx stop >/dev/null 2>&1 || true
    NGINX=/usr/sbin/nginx
fi
"$NGINX" -v
exec cargo bench --bench load -- --nginx "$NGINX" --scenarios latent,original,small \
    --csv target/load/nginx.csv "$@"
