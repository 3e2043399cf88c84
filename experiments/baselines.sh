#!/usr/bin/env bash
# Classical baselines on the LLM's splits (issue 4, deliverable 5). Writes experiments/results/baselines_*.json.
# Data: ../shared/data (research-only; read in place, never copied). Run from the repository root.
set -euo pipefail
DATA=${DATA:-../shared/data}  # from a worktree under /work/wt: DATA=/work/shared/data
R=experiments/results
RECPEFT=${RECPEFT:-recpeft}
# --history-len 10: the window the recorded results used (TALLRec's; train's default is 6)
run() { echo "+ recpeft baselines $* --history-len 10" >&2; $RECPEFT baselines "$@" --history-len 10 --threads 1; }
run --data "$DATA/ml-100k" --format movielens --task preference --out $R/baselines_ml100k_preference.json
for n in 16 64 256; do
  run --data "$DATA/ml-100k" --format movielens --task preference --train-samples $n \
      --out $R/baselines_ml100k_preference_$n.json
done
run --data "$DATA/ml-100k" --format movielens --task ranking --out $R/baselines_ml100k_ranking.json
run --data "$DATA/amazon-scientific" --format amazon-unisrec --task ranking --out $R/baselines_scientific_ranking.json
