#!/usr/bin/env bash
# Runs the public HTTP cache test suite (http-tests/cache-tests, npm package
# http-cache-tests, the suite behind cache-tests.fyi) against `vaeproxy serve`
# routed to the suite's own origin, and prints how many tests pass, next to
# the suite's published nginx and Varnish results counted the same way.
#
#   scripts/cache-tests.sh            # full run; results in target/cache-tests/results.json
#   scripts/cache-tests.sh TEST-ID    # one test, verbose
#
# Needs node/npm (apt install nodejs npm). Ports: origin 8000, proxy 8081, its admin listener 8082.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=target/cache-tests
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/http-cache-tests" ]; then
  (cd "$dir" && npm install --silent --no-audit --no-fund http-cache-tests@0.4.5 >/dev/null)
  (cd "$dir/node_modules/http-cache-tests" && npm install --silent --no-audit --no-fund >/dev/null)
fi
suite=$root/$dir/node_modules/http-cache-tests
cargo build --release --quiet
cat > "$dir/proxy.toml" <<TOML
listen = "127.0.0.1:8081"
[admin]
listen = "127.0.0.1:8082"
[[route]]
origin = "http://127.0.0.1:8000"
preserve_host = true
TOML
(cd "$suite" && exec env npm_config_port=8000 npm_config_protocol=http npm_config_pidfile="$root/$dir/server.pid" node server/server.mjs) >"$dir/origin.log" 2>&1 &
origin_pid=$!
RUST_LOG=${RUST_LOG:-warn} target/release/vaeproxy serve --config "$dir/proxy.toml" >"$dir/proxy.log" 2>&1 &
proxy_pid=$!
trap 'kill $origin_pid $proxy_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8082/_vaeproxy/healthz && break; sleep 0.1; done
sleep 0.5
cd "$suite"
if [ $# -gt 0 ]; then
  npm_config_base=http://127.0.0.1:8081 npm_config_id="$1" node --no-warnings cli.mjs
  exit 0
fi
npm_config_base=http://127.0.0.1:8081 npm_config_id= npm_package_config_id= node --no-warnings cli.mjs >"$root/$dir/results.json"
kill -0 $proxy_pid || { echo "the proxy died during the suite" >&2; exit 1; }
node -e '
const count = f => { const v = Object.values(require(f)); return [v.filter(x => x === true).length, v.length] }
const [p, n] = count(process.argv[1])
console.log(`vaeproxy: ${p} of ${n} tests pass`)
for (const impl of ["nginx", "varnish", "squid", "trafficserver", "apache"]) {
  const [q] = count(process.argv[2] + "/results/" + impl + ".json")
  console.log(`${impl}: ${q} (published results in the suite)`)
}' "$root/$dir/results.json" "$suite"
echo "by the suite's own classifier (pass / fail / ...):"
node "$root/scripts/cache-tests-classify.mjs" "$suite" "$root/$dir/results.json" \
  "$suite/results/nginx.json" "$suite/results/varnish.json" "$suite/results/trafficserver.json" \
  "$suite/results/squid.json" "$suite/results/apache.json"
