#!/usr/bin/env bash
# Sourced by the study recipes: require_known_arms ARMS... fails (exit 2) on an arm that the
# caller's associative array ARM_KNOBS does not define, naming the valid ones; require_seeds SEEDS...
# fails (exit 2) on a seed that is not an integer >= 0.
require_known_arms() {
    local arm
    for arm in "$@"; do
        if [ -z "${ARM_KNOBS[$arm]+set}" ]; then
            echo "unknown arm '$arm': arms are ${!ARM_KNOBS[*]}" >&2
            exit 2
        fi
    done
}
require_seeds() {
    local seed
    for seed in "$@"; do
        if ! [[ "$seed" =~ ^(0|[1-9][0-9]*)$ ]]; then
            echo "SEEDS must be integers >= 0, got '$seed' in '$*'" >&2
            exit 2
        fi
    done
}
