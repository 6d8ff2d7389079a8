#!/usr/bin/env bash
# Sourced by the study recipes: require_known_arms ARMS... fails (exit 2) on an arm that the
# caller's associative array ARM_KNOBS does not define, naming the valid ones.
require_known_arms() {
    local arm
    for arm in "$@"; do
        if [ -z "${ARM_KNOBS[$arm]+set}" ]; then
            echo "unknown arm '$arm': arms are ${!ARM_KNOBS[*]}" >&2
            exit 2
        fi
    done
}
