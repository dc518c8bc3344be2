#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: ffmpeg/ffprobe publish and inspect streams; GStreamer publishes as a second,
# independent RTMP client (rtmp2sink, and rtmpsink over librtmp); Chromium and Firefox (driven over
# WebDriver BiDi, no geckodriver) run the web pages' tests; npm brings anvil and solc-js (contracts/).
apt_pkgs=()
command -v ffmpeg >/dev/null 2>&1 || apt_pkgs+=(ffmpeg)
command -v gst-launch-1.0 >/dev/null 2>&1 || apt_pkgs+=(gstreamer1.0-tools)
for p in gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav; do
  dpkg -s "$p" >/dev/null 2>&1 || apt_pkgs+=("$p")
done
[ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
[ -x /usr/bin/chromedriver ] || apt_pkgs+=(chromium-driver)
[ -x /usr/bin/firefox-esr ] || apt_pkgs+=(firefox-esr)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(nodejs npm)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# The local chain (anvil) and the Solidity compiler (solc-js) the payment tests use, pinned in contracts/.
npm ci --prefix contracts --no-audit --no-fund --ignore-scripts --loglevel=error
python3 -m mypy
python3 -m pytest -q "$@"
