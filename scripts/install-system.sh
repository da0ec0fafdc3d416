#!/usr/bin/env bash
# System packages some tests and the Fashion-MNIST profile use, from Debian/Ubuntu's archive:
#   dataset-fashion-mnist  the real Fashion-MNIST files (the offline larger profile and its tests)
#   chromium               headless browser that opens the published report in the report tests
# Installs them when run as root on a Debian-like system; otherwise says what to install and carries on
# (the tests that need them are skipped, except under KSTAR_REQUIRE_SYSTEM_DEPS=1, as in CI).
set -uo pipefail
packages=(dataset-fashion-mnist chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "kstar: could not install ${missing[*]}" >&2; exit 1; }
else
  echo "kstar: optional system packages missing: ${missing[*]} (sudo apt-get install ${missing[*]}); dependent tests will be skipped"
fi
