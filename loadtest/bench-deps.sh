#!/usr/bin/env bash
# Installs the benchmarks' outside tools where they are missing (safe to run again): wrk (the load
# generator) and nginx (the reverse-proxy reference the router is measured against), from Debian.
set -euo pipefail
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "the benchmarks need ${missing[*]}: run as root, or: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian's ${missing[*]} for the benchmarks"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
