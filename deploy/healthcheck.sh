#!/usr/bin/env bash
# Container health check for the Hearth image: GET /healthz on the probe listener
# (HEARTH_PROBE_HTTP, default 0.0.0.0:7881) through bash's /dev/tcp, so the image needs
# no curl or wget. Exit 0 when the node answers "200", 1 otherwise.
set -u
addr="${HEARTH_PROBE_HTTP:-0.0.0.0:7881}"
port="${addr##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || exit 1
[[ "$status" == HTTP/1.?" 200 "* ]]
