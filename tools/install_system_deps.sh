#!/usr/bin/env bash
# Debian packages that Open3D needs at import (libusb) and for rendering (GL, X/EGL, Xvfb for
# headless windows). Installs them when running as root and missing; otherwise prints the command.
set -u
pkgs=(libusb-1.0-0 libgl1 libegl1 libgomp1 libx11-6 libxrender1 libxext6 xvfb xauth)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "Installing system packages for Open3D: ${missing[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive $cmd -qq) >/dev/null 2>&1 \
    || echo "WARNING: '$cmd' failed; Open3D import or rendering may fail (tests skip those parts)."
else
  echo "WARNING: Open3D needs system packages. Run as root: $cmd"
fi
exit 0
