#!/bin/sh
# Build mosquitto's password file from one secret file per MQTT user:
#   <secrets dir>/mqtt_<user>   first line = that user's password
# Usage: make-passwd.sh [SECRETS_DIR] [OUTPUT_FILE]
# (defaults: /run/secrets and /mosquitto/auth/passwd, as in compose.yaml)
set -eu
src=${1:-/run/secrets}
out=${2:-/mosquitto/auth/passwd}
umask 077
tmp="$out.new"
: > "$tmp"
n=0
for f in "$src"/mqtt_*; do
    [ -f "$f" ] || continue
    user=${f##*/mqtt_}
    pw=$(head -n 1 "$f")
    if [ -z "$pw" ]; then
        echo "make-passwd: $f is empty" >&2
        exit 1
    fi
    mosquitto_passwd -b "$tmp" "$user" "$pw"
    n=$((n + 1))
done
if [ "$n" -eq 0 ]; then
    echo "make-passwd: no mqtt_<user> files in $src" >&2
    exit 1
fi
# mosquitto drops root for its own user before reading the file.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto: "$tmp"
fi
mv "$tmp" "$out"
echo "make-passwd: $n user(s) written to $out"
