#!/usr/bin/env bash
# Run a synthpre command on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--accelerator-type v4-32] [--project P]
#                     [--version tpu-ubuntu2204-base] [--repo-dir ~/synthpre-jax] [--delete-on-exit]
#                     [--dry-run] -- synthpre train --gin_file=... --gin.MODEL_DIR="'gs://bucket/run'" ...
#
# Steps: create the slice unless it exists (reused otherwise), copy this checkout to every
# worker, install it with jax[tpu], run the same command on --worker=all (jax.distributed
# discovers the slice by itself), stream the logs. Ctrl-C / SIGTERM sends SIGTERM to the
# trainers, which save a checkpoint at the next step boundary and exit; rerunning resumes.
# --dry-run prints every command instead of running it.
set -euo pipefail

TPU="" ZONE="" TYPE="v4-8" PROJECT="" VERSION="tpu-ubuntu2204-base" REPO_DIR="~/synthpre-jax"
DRY=0 DELETE=0
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2;;
    --zone) ZONE="$2"; shift 2;;
    --accelerator-type) TYPE="$2"; shift 2;;
    --project) PROJECT="$2"; shift 2;;
    --version) VERSION="$2"; shift 2;;
    --repo-dir) REPO_DIR="$2"; shift 2;;
    --delete-on-exit) DELETE=1; shift;;
    --dry-run) DRY=1; shift;;
    -h|--help) usage; exit 0;;
    --) shift; break;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
CMD=("$@")
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "error: --tpu and --zone are required (see --help)" >&2; exit 2; }
[[ ${#CMD[@]} -gt 0 ]] || { echo "error: give the command after --, e.g. -- synthpre train --gin_file=..." >&2; exit 2; }

GC=(gcloud compute tpus tpu-vm)
COMMON=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project "$PROJECT")
REMOTE_CMD=$(printf '%q ' "${CMD[@]}")
SRC_DIR=$(cd "$(dirname "$0")/.." && pwd)

run() { if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

if [[ $DRY == 1 ]] || ! "${GC[@]}" describe "$TPU" "${COMMON[@]}" >/dev/null 2>&1; then
  [[ $DRY == 1 ]] && echo "# create the slice unless '${GC[*]} describe $TPU' succeeds"
  run "${GC[@]}" create "$TPU" "${COMMON[@]}" --accelerator-type "$TYPE" --version "$VERSION"
fi
# Ship the committed tree (not .venv or run directories) as one archive.
TARBALL=/tmp/synthpre-jax-$$.tar.gz
run git -C "$SRC_DIR" archive --format=tar.gz -o "$TARBALL" HEAD
run "${GC[@]}" scp "$TARBALL" "$TPU:/tmp/synthpre-jax.tar.gz" "${COMMON[@]}" --worker=all
run "${GC[@]}" ssh "$TPU" "${COMMON[@]}" --worker=all --command \
  "mkdir -p $REPO_DIR && tar xzf /tmp/synthpre-jax.tar.gz -C $REPO_DIR && cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"

stop() {
  echo "stopping: SIGTERM to the trainers (they checkpoint at the next step boundary)" >&2
  run "${GC[@]}" ssh "$TPU" "${COMMON[@]}" --worker=all --command "pkill -TERM -f 'synthpre' || true"
}
trap stop INT TERM
run "${GC[@]}" ssh "$TPU" "${COMMON[@]}" --worker=all --command \
  "cd $REPO_DIR && PATH=$REPO_DIR/.venv/bin:\$PATH $REMOTE_CMD 2>&1 | tee -a ~/synthpre.log"
trap - INT TERM
if [[ $DELETE == 1 ]]; then
  run "${GC[@]}" delete "$TPU" "${COMMON[@]}" --quiet
fi
