"""Build the tiny CPU preset: ``python -m verl_commeff.presets --out DIR``.

Writes ``DIR/model`` (tiny Qwen2 + tokenizer, a Hugging Face directory) and
``DIR/gsm8k/{train,test}.parquet`` (GSM8K-format problems in verl's layout). Existing
outputs are kept unless ``--force``.
"""

import argparse
import os


def main(argv=None) -> None:
    from verl_commeff.presets.gsm8k_synth import write_gsm8k_parquet
    from verl_commeff.presets.tiny_model import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-train", type=int, default=256, help="training problems (default 256)")
    parser.add_argument("--n-test", type=int, default=64, help="validation problems (default 64)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs exist")
    args = parser.parse_args(argv)
    model_dir, data_dir = os.path.join(args.out, "model"), os.path.join(args.out, "gsm8k")
    if args.force or not os.path.exists(os.path.join(model_dir, "config.json")):
        build_tiny_model(model_dir)
    if args.force or not os.path.exists(os.path.join(data_dir, "test.parquet")):
        write_gsm8k_parquet(data_dir, n_train=args.n_train, n_test=args.n_test)
    print(f"tiny preset: model {model_dir}, data {data_dir}")


if __name__ == "__main__":
    main()
