#!/bin/sh
# Container entrypoint for nocpolicyd.
#
# nocpolicyd refuses an MQTT password file that group or others can read. Secrets
# that compose or Kubernetes mount are often 0444 and owned by root, so when
# NOCPOLICY_MQTT_PASSWORD_SECRET names one, it is copied to a 0600 file this user
# owns and passed with --mqtt-password-file. NOCPOLICY_MQTT (a mqtt:// URL) adds
# --mqtt. Both apply only when the command is nocpolicyd; anything else (for
# example `nocpolicyctl status`) runs unchanged.
set -eu
if [ "${1:-}" = nocpolicyd ]; then
    if [ -n "${NOCPOLICY_MQTT_PASSWORD_SECRET:-}" ]; then
        dir=${NOCPOLICY_RUNTIME_DIR:-/run/nocpolicy}
        umask 077
        mkdir -p "$dir"
        cp "$NOCPOLICY_MQTT_PASSWORD_SECRET" "$dir/mqtt.password.new"
        chmod 0600 "$dir/mqtt.password.new"
        mv "$dir/mqtt.password.new" "$dir/mqtt.password"
        set -- "$@" --mqtt-password-file "$dir/mqtt.password"
    fi
    if [ -n "${NOCPOLICY_MQTT:-}" ]; then
        set -- "$@" --mqtt "$NOCPOLICY_MQTT"
    fi
fi
exec "$@"
