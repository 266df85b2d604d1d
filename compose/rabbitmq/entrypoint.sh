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
touch /tmp/phoenix95-ready
echo "phoenix95: user $user ready on vhost $vhost"

wait "$server"
