#!/bin/sh
# RabbitMQ for Phoenix 95 (compose only).
#
# Starts the broker, then makes sure the vhost and the application user exist with the
# password from the environment: a boot-time definitions import skips the image's default
# user, and the password is a secret that is never committed in definitions.json.
# The healthcheck only passes once /tmp/phoenix95-ready exists.
#
# A cluster node (compose HA) also gets:
# - PHOENIX95_CLUSTER_SIZE: ready only once that many nodes run (no queue is declared on a
#   cluster of one, which would give it one replica);
# - PHOENIX95_QUEUE_TYPE=quorum: the vhost is created with quorum as its default queue type,
#   so every durable queue the clients declare is a quorum queue;
# - the Erlang cookie shared by the nodes, from the compose secret rabbitmq_erlang_cookie.
set -eu

: "${PHOENIX95_AMQP_PASSWORD:?PHOENIX__MESSAGE_QUEUE__PASSWORD must be set}"
user="${PHOENIX95_AMQP_USER:-phoenix95}"
vhost="${PHOENIX95_AMQP_VHOST:-/trading}"
cluster_size="${PHOENIX95_CLUSTER_SIZE:-1}"
queue_type="${PHOENIX95_QUEUE_TYPE:-}"
cookie=/run/secrets/rabbitmq_erlang_cookie

if [ "$cluster_size" -gt 1 ] && [ ! -s "$cookie" ]; then
    echo "phoenix95: a cluster node needs the shared Erlang cookie (PHOENIX_RABBITMQ_ERLANG_COOKIE)" >&2
    exit 2
fi
if [ -f "$cookie" ]; then
    install -m 0400 -o rabbitmq -g rabbitmq "$cookie" /var/lib/rabbitmq/.erlang.cookie
fi

rm -f /tmp/phoenix95-ready
docker-entrypoint.sh rabbitmq-server &
server=$!
trap 'rabbitmqctl stop >/dev/null 2>&1 || true; wait "$server" || true; exit 0' TERM INT

rabbitmqctl await_startup --timeout 180 >/dev/null
if [ "$cluster_size" -gt 1 ]; then
    rabbitmqctl await_online_nodes "$cluster_size" --timeout 600 >/dev/null
fi
# every node runs this: whichever is first creates, the others find it done
if [ -n "$queue_type" ]; then
    rabbitmqctl add_vhost "$vhost" --default-queue-type "$queue_type" >/dev/null 2>&1 || true
else
    rabbitmqctl add_vhost "$vhost" >/dev/null 2>&1 || true
fi
rabbitmqctl add_user "$user" "$PHOENIX95_AMQP_PASSWORD" >/dev/null 2>&1 \
    || rabbitmqctl change_password "$user" "$PHOENIX95_AMQP_PASSWORD" >/dev/null
rabbitmqctl set_permissions -p "$vhost" "$user" '.*' '.*' '.*' >/dev/null
rabbitmqctl set_user_tags "$user" management >/dev/null
touch /tmp/phoenix95-ready
echo "phoenix95: user $user ready on vhost $vhost"

wait "$server"
