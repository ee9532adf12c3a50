#!/usr/bin/env bash
# Installs the Debian packages that carry genlab's embedded data (Fashion-MNIST, fortunes,
# espeak-ng). Idempotent; where apt is unavailable (macOS, no root) it says what it skipped
# and the commands that need that data explain it when they run.
set -u
missing=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq >/dev/null 2>&1 || true
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    echo "setup: could not install ${missing[*]}; the embedded data sets they carry will be unavailable" >&2
  fi
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
  echo "setup: installing Debian packages with sudo: ${missing[*]}"
  sudo apt-get update -qq >/dev/null 2>&1 || true
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || echo "setup: could not install ${missing[*]}" >&2
else
  echo "setup: no apt here; skipped ${missing[*]}. Embedded corpora from them (fortunes, fashion-mnist, espeak-ng voice) are unavailable; every command that needs them will say so." >&2
fi
exit 0
