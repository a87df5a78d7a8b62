#!/bin/sh
# Take a PNG of the dashboard of a running stack (`make run` / `vcm run`) with headless chromium.
# It starts nothing itself.
#
#   docs/screenshot.sh [URL] [OUTPUT]
#
# URL defaults to $VCM_DASHBOARD_URL or http://127.0.0.1:8080/, OUTPUT to docs/dashboard.png;
# VCM_SCREENSHOT_SIZE (default 1280,900) is the browser window, and so the image size.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
url=${1:-${VCM_DASHBOARD_URL:-http://127.0.0.1:8080/}}
out=${2:-$root/docs/dashboard.png}
case $out in /*) ;; *) out=$PWD/$out ;; esac
size=${VCM_SCREENSHOT_SIZE:-1280,900}

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "screenshot.sh: chromium is not installed (sudo apt-get install chromium)" >&2
    exit 1
fi
if command -v curl >/dev/null 2>&1 && ! curl -fsS -o /dev/null --max-time 15 "$url"; then
    echo "screenshot.sh: no dashboard answers at $url; start the stack first (make run)" >&2
    exit 1
fi

profile=$(mktemp -d "${TMPDIR:-/tmp}/vcm-screenshot-XXXXXX")
trap 'rm -rf "$profile"' EXIT INT TERM
mkdir -p "$(dirname "$out")"
rm -f "$out"
# --no-sandbox: chromium refuses to run as root without it (containers, CI)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --window-size="$size" \
    --screenshot="$out" "$url" >/dev/null 2>&1 || true
if [ ! -s "$out" ]; then
    echo "screenshot.sh: chromium wrote no screenshot" >&2
    exit 1
fi
echo "wrote $out ($size) from $url"
