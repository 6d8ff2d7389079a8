# Sourced by scripts/demo.sh and recipes/tiny_seed_study.sh: `progress TAG STEPS` turns verl's console
# log on stdin into one line per training/validation step (the full log goes to a file with tee).
progress() {
    local tag=$1 steps=$2
    stdbuf -oL tr '\r' '\n' | grep --line-buffered -E "step:[0-9]+ - " | sed -u -E \
        -e 's#.*step:([0-9]+) - .*val-core/[^ ]*/mean@[0-9]+:(np\.float64\()?([0-9.]+).*#['"$tag"']   step \1: validation accuracy \3#; t' \
        -e 's#.*step:([0-9]+) - .*critic/score/mean:([0-9.]+).*response_length/mean:([0-9.]+).*#['"$tag"']   step \1/'"$steps"': train score \2, response length \3#' \
        || true
}
