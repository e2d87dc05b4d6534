#!/usr/bin/env bash
# The paper's setting, end to end, on a GPU machine with internet (see docs/reproduce.md):
#   download-data -> crawl -> check-data -> distill (LLaVA-v1.6-Mistral-7B)
#   -> for each category x candidate set: tune LaViC, tune the text-only ablation, evaluate both.
# Every step is resumable: rerun the script after an interruption and finished steps are skipped
# (download-data and crawl keep what they fetched; distill/tune resume from their checkpoints).
#
# Overrides (environment): OUT, DATA, MODEL, CATEGORIES, CANDIDATE_TYPES, LAVIC, and DRY_RUN=1
# to print the commands without running them.
set -euo pipefail

LAVIC=${LAVIC:-.venv/bin/lavic}
OUT=${OUT:-runs/reproduce}
DATA=${DATA:-data}
MODEL=${MODEL:-llava-hf/llava-v1.6-mistral-7b-hf}
CATEGORIES=${CATEGORIES:-"all_beauty amazon_fashion amazon_home"}
CANDIDATE_TYPES=${CANDIDATE_TYPES:-"candidates_st candidates_gpt_large"}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

step() {  # print, then run unless DRY_RUN
    echo "+ $*"
    if [[ -z "${DRY_RUN:-}" ]]; then "$@"; fi
}
data_flags=(--item_meta_path "$DATA/item2meta_train.json" --image_dir "$DATA/train_images" --data_dir "$DATA")

step "$LAVIC" download-data --dest "$DATA"
step "$LAVIC" crawl --item_meta_path "$DATA/item2meta_train.json"
step "$LAVIC" crawl --item_meta_path "$DATA/item2meta_valid.jsonl"
step "$LAVIC" check-data --data_dir "$DATA"

stage1="$OUT/distill/vision_lora_adapter_best"
if [[ -f "$stage1/lavic.json" ]]; then
    echo "stage 1 done: $stage1"
else
    step "$LAVIC" distill --config "$HERE/distill.yaml" --model_name "$MODEL" \
        --train_data "$DATA/item2meta_train.json" --val_data "$DATA/item2meta_valid.jsonl" \
        --train_images_dir "$DATA/train_images" --val_images_dir "$DATA/valid_images" \
        --output_dir "$OUT/distill" --resume
fi

for category in $CATEGORIES; do
    for candidates in $CANDIDATE_TYPES; do
        run="$OUT/$category/$candidates"
        common=(--model_dir "$stage1" --category "$category" --candidate_type "$candidates"
                "${data_flags[@]}" --cache_dir "$OUT/item_tokens")
        for variant in lavic text_only; do
            if [[ -f "$run/$variant/trained_lora_adapter/lavic.json" ]]; then
                echo "tuned: $run/$variant"
                continue
            fi
            extra=()
            [[ $variant == text_only ]] && extra=(--no_images)
            step "$LAVIC" tune --config "$HERE/tune.yaml" "${common[@]}" "${extra[@]}" \
                --finetune_output_dir "$run/$variant" --resume
        done
        step "$LAVIC" evaluate --config "$HERE/evaluate.yaml" \
            --model_dir "$run/lavic/trained_lora_adapter" \
            --text_only_model_dir "$run/text_only/trained_lora_adapter" \
            --category "$category" --candidate_type "$candidates" "${data_flags[@]}" \
            --cache_dir "$OUT/item_tokens" --output_dir "$run/eval"
    done
done
echo "results: $OUT/<category>/<candidate set>/eval"
