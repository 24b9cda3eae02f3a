#!/usr/bin/env bash
# Meta-trains the learned optimizers of each task with its shipped experiment config, then
# evaluates them with lopt-eval from held-out seeds against tuned SGDM, Adam and Adam with a
# warmup-cosine schedule: at the meta-training horizon, at twice the horizon, and on a model
# twice as wide (the baselines re-tuned for each).
#
#   scripts/reproduce.sh                          # every task (about an hour per task here)
#   EXPERIMENTS="mlp cnn" scripts/reproduce.sh    # a subset
#   RECIPE=paper scripts/reproduce.sh             # the UNF paper's meta-training setting
#
# Each meta-training is the experiment's own budget (experiment=mlp: 1500 outer steps, about
# half an hour on 2 CPU cores). Learned optimizers: unf, deepsets and sgdm (momentum SGD whose
# learning rate and momentum are meta-trained the same way: the paper's baseline, labelled
# sgdm_meta), plus nfn on the CNN, the only task where it differs from unf.
#
# Finished runs (a run directory with summary.json) are not re-trained; delete them to redo.
# Outputs: $RUNS/<exp>/<lopt>/ (lopt-train run directories), $EVAL/<exp>/<check>/ (curves.png,
# results.json, results.md) and $EVAL/<exp>/manifest.yaml for scripts/results_page.py.
set -euo pipefail

RUNS=${RUNS:-runs/reproduce}
EVAL=${EVAL:-runs/reproduce/eval}
EXPERIMENTS=${EXPERIMENTS:-"mlp cnn rnn transformer"}
RECIPE=${RECIPE:-tuned}
SEEDS=${SEEDS:-10}                # evaluation seeds per optimizer
TRAIN_ARGS=${TRAIN_ARGS:-}        # extra lopt-train overrides for every run
EVAL_ARGS=${EVAL_ARGS:-}          # extra lopt-eval overrides for every evaluation

LOPT_TRAIN=${LOPT_TRAIN:-lopt-train}
LOPT_EVAL=${LOPT_EVAL:-lopt-eval}

declare -A TASK=([mlp]=mlp_augmented_digits [cnn]=cnn_augmented_digits [rnn]=rnn_text
                 [transformer]=transformer_text)
declare -A WIDER=([mlp]="task.width=64" [cnn]="task.channels=[32,64]"
                  [rnn]="task.hidden_size=128" [transformer]="task.width=64")

echo "commit: $(git -C "$(dirname "$0")" rev-parse HEAD 2>/dev/null || echo unknown)"
for exp in $EXPERIMENTS; do
  if [[ -z "${TASK[$exp]:-}" ]]; then
    echo "unknown experiment '$exp'; expected some of: ${!TASK[*]}" >&2
    exit 2
  fi
  lopts="unf deepsets sgdm"
  [[ $exp == cnn ]] && lopts="unf nfn deepsets sgdm"
  horizon=$($LOPT_TRAIN experiment="$exp" --cfg job 2>/dev/null \
    | awk '/^schedule:/ {inside = 1} inside && /max_length:/ {print $2; exit}')
  runs=()
  for lopt in $lopts; do
    run_dir=$RUNS/$exp/$lopt
    if [[ -f $run_dir/summary.json ]]; then
      echo "== $run_dir is trained already; skipping"
    else
      echo "== meta-training $lopt on $exp (recipe $RECIPE, horizon $horizon)"
      # shellcheck disable=SC2086  # TRAIN_ARGS is a list of overrides
      (set -x; $LOPT_TRAIN experiment="$exp" lopt="$lopt" recipe="$RECIPE" progress=false \
        logger=none hydra.run.dir="$run_dir" $TRAIN_ARGS)
    fi
    runs+=("$run_dir")
  done
  optimizers=$(IFS=,; echo "${runs[*]}")
  # The meta-trained sgdm is labelled apart from the tuned sgdm baseline.
  labels="[$(echo "$lopts" | sed 's/sgdm/sgdm_meta/; s/ /,/g')]"
  declare -A CHECKS=([horizon]="num_steps=$horizon" [horizon_2x]="num_steps=$((2 * horizon))"
                     [width_2x]="num_steps=$horizon ${WIDER[$exp]}")
  for check in horizon horizon_2x width_2x; do
    echo "== evaluating $lopts on ${TASK[$exp]} ($check)"
    # shellcheck disable=SC2086  # CHECKS and EVAL_ARGS are lists of overrides
    (set -x; $LOPT_EVAL task="${TASK[$exp]}" "optimizers=[$optimizers]" "labels=$labels" \
      num_seeds="$SEEDS" ${CHECKS[$check]} out_dir="$EVAL/$exp/$check" $EVAL_ARGS)
  done
  {
    echo "${TASK[$exp]}:"
    echo "  meta_training:"
    for lopt in $lopts; do echo "    $lopt: $RUNS/$exp/$lopt"; done
    echo "  evaluations:"
    for check in horizon horizon_2x width_2x; do echo "    $check: $EVAL/$exp/$check"; done
  } > "$EVAL/$exp/manifest.yaml"
done
echo "results: $EVAL/*/*/results.md; manifests: $EVAL/*/manifest.yaml"
