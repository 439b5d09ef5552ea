#!/usr/bin/env bash
# The README's examples of `status`, `retry` and the cron status lines, made for real against
# `batchgen simulate` on loopback. Prints the transcript; bench/results/readme-examples_<commit>.txt
# keeps the one the README shows.   Usage: bash bench/readme_examples.sh > transcript.txt
set -uo pipefail
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
export BATCHGEN_CACHE_DIR="$work/cache"
mkdir manifests
python3 - <<'EOF'
import csv
items = ["lamp", "vase", "mug", "chair", "throw", "candle", "shirt", "bowl", "rug", "clock"]
with open("manifests/catalogue.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "prompt", "sku"])
    for i in range(30):
        w.writerow([f"{items[i % 10]}-{i:02d}", f"A studio photo of a {items[i % 10]}, model {i}", f"SKU-{i:03d}"])
EOF
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "# at commit $(git -C "$OLDPWD" rev-parse --short HEAD); manifests/catalogue.csv: 30 jobs (id, prompt, sku)"
p1=$(port)
echo "# batchgen simulate --port $p1 --failure-rate 0.25 --credits 26 --latency 0.2 --seed 7"
batchgen simulate --port "$p1" --failure-rate 0.25 --credits 26 --latency 0.2 --seed 7 >/dev/null 2>&1 &
sleep 2
export RUNBASE_API_KEY=anything RUNBASE_BASE_URL="http://127.0.0.1:$p1/api/v1"
echo '$ batchgen run manifests/catalogue.csv --output images --max-attempts 1'
batchgen run manifests/catalogue.csv --output images --max-attempts 1 2>&1; echo "(exit $?)"
echo '$ batchgen status --output images'
batchgen status --output images
echo '$ batchgen retry --output images --failed --error-kind run-failed'
batchgen retry --output images --failed --error-kind run-failed

echo
echo "# the API down (nothing listens on port 9), stopped with SIGINT after 13 s"
RUNBASE_BASE_URL=http://127.0.0.1:9/api/v1 timeout -s INT 13 batchgen run manifests/catalogue.csv --output down 2>&1
p2=$(port)
echo "# a 429 with Retry-After 40: batchgen simulate --port $p2 --create-rate 1 --create-burst 1 --retry-after fixed:40 --latency 0.5; SIGINT after 13 s"
batchgen simulate --port "$p2" --create-rate 1 --create-burst 1 --retry-after fixed:40 --latency 0.5 >/dev/null 2>&1 &
sleep 2
RUNBASE_BASE_URL="http://127.0.0.1:$p2/api/v1" timeout -s INT 13 batchgen run manifests/catalogue.csv --output paused 2>&1
