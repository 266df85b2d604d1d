#!/bin/sh
# RabbitMQ for Phoenix 95 (compose only).
#
# Starts the broker with rabbitmq/definitions.json imported at boot, then makes
# sure the application user exists with the password from the environment:
# a boot-time definitions import skips the image's default user, and the
# password is a secret that is never committed in definitions.json.
# The healthcheck only passes once /tmp/phoenix95-ready exists.
set -eu

: "${PHOENIX95_AMQP_PASSWORD:?PHOENIX__MESSAGE_QUEUE__PASSWORD must be set}"
user="${PHOENIX95_AMQP_USER:-phoenix95}"
vhost="${PHOENIX95_AMQP_VHOST:-/trading}"

rm -f /tmp/phoenix95-ready
docker-entrypoint.sh rabbitmq-server &
server=$!
trap 'rabbitmqctl stop >/dev/null 2>&1 || true; wait "$server" || true; exit 0' TERM INT

rabbitmqctl await_startup --timeout 180 >/dev/null
rabbitmqctl add_vhost "$vhost" >/dev/null 2>&1 || true
if rabbitmqctl list_users --quiet --no-table-headers | cut -f1 | grep -qx "$user"; then
    rabbitmqctl change_password "$user" "$PHOENIX95_AMQP_PASSWORD" >/dev/null
else
    rabbitmqctl add_user "$user" "$PHOENIX95_AMQP_PASSWORD" >/dev/null
fi
rabbitmqctl set_permissions -p "$vhost" "$user" '.*' '.*' '.*' >/dev/null
rabbitmqctl set_user_tags "$user" management >/dev/null
echo "phoenix95: user $user ready on vhost $vhost"

# One user per process with least permissions (users.tsv, generated from
# scripts/grants.py), each with its password from PHOENIX95_MQ_PASSWORD_<KIND>.
tab=$(printf '\t')
grep -v '^#' /phoenix95/users.tsv > /tmp/phoenix95-users.tsv
while IFS="$tab" read -r what kind name a b c; do
    if [ "$what" = user ]; then
        var="PHOENIX95_MQ_PASSWORD_$(echo "$kind" | tr '[:lower:]' '[:upper:]')"
        eval "password=\${$var:-}"
        [ -n "$password" ] || { echo "phoenix95: $var is not set" >&2; exit 1; }
        if rabbitmqctl list_users --quiet --no-table-headers | cut -f1 | grep -qx "$name"; then
            rabbitmqctl change_password "$name" "$password" >/dev/null
        else
            rabbitmqctl add_user "$name" "$password" >/dev/null
        fi
        rabbitmqctl set_permissions -p "$vhost" "$name" "$a" "$b" "$c" >/dev/null
        rabbitmqctl clear_topic_permissions -p "$vhost" "$name" >/dev/null 2>&1 || true
    elif [ "$what" = topic ]; then
        rabbitmqctl set_topic_permissions -p "$vhost" "$name" "$a" "$b" '.*' >/dev/null
    fi
done < /tmp/phoenix95-users.tsv
echo "phoenix95: per-process users ready (users.tsv)"
touch /tmp/phoenix95-ready

wait "$server"
