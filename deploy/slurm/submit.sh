#!/usr/bin/env bash
# Submit a run over a Slurm job array and its commit, which waits for every shard.
#   deploy/slurm/submit.sh pipelines/ministere.toml 16
# A failed shard keeps the commit from running (afterok): rerun that task in the
# same array (`scontrol requeue ARRAY_JOB_ID_I`), or anywhere with
# `moulin run PIPELINE --shard I/SHARDS --run-id slurm-ARRAY_JOB_ID`; then
# `moulin commit slurm-ARRAY_JOB_ID PIPELINE` (or `sbatch commit.sbatch ARRAY_JOB_ID PIPELINE`).
set -euo pipefail
pipeline=${1:?usage: submit.sh PIPELINE [SHARDS]}
shards=${2:-8}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
array=$(sbatch --parsable --array=0-$((shards - 1)) "$here/shards.sbatch" "$pipeline")
array=${array%%;*}
sbatch --parsable --dependency=afterok:"$array" "$here/commit.sbatch" "$array" "$pipeline"
echo "run slurm-$array: $shards shards (job $array), then its commit"
