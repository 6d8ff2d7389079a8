"""Build the tiny CPU preset: ``python -m verl_commeff.presets --out DIR``.

Writes ``DIR/model`` (tiny Qwen2 + tokenizer, a Hugging Face directory) and
``DIR/gsm8k/{train,test}.parquet`` (GSM8K-format problems in verl's layout). By default
the model is warm-started (:mod:`verl_commeff.presets.warm_start`) on problems of the
preset's difficulty until it solves part of them, so that GRPO has something to learn;
``--no-warm-start`` keeps the random initialisation (the machinery-only preset the unit
tests use). Existing outputs built with the same settings are reused unless ``--force``.
"""

import argparse
import json
import os
import shutil
import time


def main(argv=None) -> None:
    from verl_commeff.presets.gsm8k_synth import DIFFICULTIES, write_gsm8k_parquet
    from verl_commeff.presets.tiny_model import build_tiny_model
    from verl_commeff.presets.warm_start import WarmStartConfig, warm_start

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-train", type=int, default=1024, help="training problems (default 1024)")
    parser.add_argument("--n-test", type=int, default=128, help="validation problems (default 128)")
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="tiny_rl",
                        help="problem difficulty (default tiny_rl)")
    parser.add_argument("--target-accuracy", type=float, default=WarmStartConfig.target_accuracy,
                        help="warm start: stop at this sampled accuracy on held-out problems")
    parser.add_argument("--no-warm-start", action="store_true", help="keep the randomly initialised model")
    parser.add_argument("--seed", type=int, default=0, help="seeds the tokenizer, model, warm start and data")
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs exist")
    args = parser.parse_args(argv)
    difficulty = DIFFICULTIES[args.difficulty]
    model_dir, data_dir = os.path.join(args.out, "model"), os.path.join(args.out, "gsm8k")
    stamp_path = os.path.join(args.out, "preset.json")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "force")}
    stamp = json.load(open(stamp_path)) if os.path.exists(stamp_path) else None
    if args.force or stamp != settings:
        start = time.time()
        for path in (model_dir, data_dir, stamp_path):  # never mix outputs of different settings
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else None
        build_tiny_model(model_dir, seed=args.seed, difficulty=difficulty)
        if not args.no_warm_start:
            summary = warm_start(model_dir, difficulty, WarmStartConfig(target_accuracy=args.target_accuracy,
                                                                        seed=args.seed))
            print(f"tiny preset: warm start reached sampled accuracy {summary['sampled_accuracy']:.3f} "
                  f"(greedy {summary['greedy_accuracy']:.3f}) after {summary['steps']} steps, {summary['seconds']} s")
        write_gsm8k_parquet(data_dir, n_train=args.n_train, n_test=args.n_test, seed=args.seed, difficulty=difficulty)
        with open(stamp_path, "w") as f:
            json.dump(settings, f, indent=1)
        print(f"tiny preset built in {time.time() - start:.0f} s")
    print(f"tiny preset: model {model_dir}, data {data_dir}")


if __name__ == "__main__":
    main()
