#!/usr/bin/env bash
# GSM8K in verl's parquet layout (train.parquet, test.parquet) for the recipes.
#   bash recipes/prepare_gsm8k.sh                       # from the Hugging Face hub, to ~/data/gsm8k
#   DATA_DIR=/data/gsm8k SOURCE=/local/gsm8k bash recipes/prepare_gsm8k.sh
set -xeuo pipefail
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
SOURCE=${SOURCE:-openai/gsm8k}
python3 -m verl_commeff.data.gsm8k --local_dir "$DATA_DIR" --source "$SOURCE"
