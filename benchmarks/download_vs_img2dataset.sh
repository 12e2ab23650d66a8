#!/usr/bin/env bash
# vlcurate's download stage vs img2dataset, same corpus, same settings, alternating runs.
#
# usage: benchmarks/download_vs_img2dataset.sh [N]          (default N=2000; from any directory)
# env:   BENCH=<repo>/../shared/bench/download  (make_corpus.py + serve.py: the fault-injecting
#                                                loopback corpus; neither tool's code)
#        RUNS=3 PORT=8765 PROCS=2 THREADS=32 SHARD=500 TIMEOUT=10 RETRIES=0 RESIZE_MODE=border
#        WORK=/tmp/vlcurate-dl-bench (corpus, outputs, logs)
#        PY=<repo>/.venv/bin/python  I2D=<that venv>/bin/img2dataset (pinned 1.47.0 in our dependencies)
#        (vlcurate itself always runs from this checkout: PYTHONPATH=<repo>)
#
# Both tools: the same URL list (url, caption + the `kind` column carried through), resize
# to 256 in RESIZE_MODE, JPEG quality 95 (img2dataset's default), WebDataset output with
# SHARD samples per shard, PROCS processes x THREADS threads, TIMEOUT s, RETRIES retries,
# X-Robots-Tag opt-outs honoured (both tools' default). vlcurate runs `vlcurate build` on
# Beam's local runner (start-up included) with allow_networks: [127.0.0.0/8] (the corpus is on 127.0.0.1).
# Runs alternate (odd rounds img2dataset first, even rounds vlcurate first) so that drift
# in the machine's load hits both. Throughput = input URLs / wall-clock seconds of the
# whole command; peak RSS = the largest VmHWM of any one process of the command's tree.
# Each round also times both tools on 8 URLs: their fixed start-up cost, reported apart.
# CPU = user+system seconds of the whole process tree (less sensitive to other load).
# The summary (download_summary.py) also checks every row's outcome against its `kind`.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-2000}
BENCH=${BENCH:-$REPO/../shared/bench/download}
RUNS=${RUNS:-3}; PORT=${PORT:-8765}; PROCS=${PROCS:-2}; THREADS=${THREADS:-32}; SHARD=${SHARD:-500}
TIMEOUT=${TIMEOUT:-10}; RETRIES=${RETRIES:-0}; RESIZE_MODE=${RESIZE_MODE:-border}
WORK=${WORK:-/tmp/vlcurate-dl-bench}
PY=${PY:-$REPO/.venv/bin/python}  # any venv with the pinned dependencies
I2D=${I2D:-$(dirname "$PY")/img2dataset}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # vlcurate from this checkout, whatever the venv
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled  # img2dataset: no update check, no wandb

[ -f "$BENCH/make_corpus.py" ] && [ -f "$BENCH/serve.py" ] || {
  echo "no benchmark harness at $BENCH (set BENCH=/path/to/shared/bench/download)" >&2; exit 2; }
mkdir -p "$WORK"
CORPUS=$WORK/corpus-$N-p$PORT
if [ ! -f "$CORPUS/urls.parquet" ]; then
  echo "generating a corpus of $N URLs in $CORPUS"
  "$PY" "$BENCH/make_corpus.py" "$N" "$CORPUS" --port "$PORT"
fi

"$PY" "$BENCH/serve.py" "$CORPUS" "$PORT" --max-seconds 3600 > "$WORK/serve.log" 2>&1 &
SRV=$!
trap 'kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
  sleep 0.1
done

recipe() {  # $1 = version name, $2 = URL list
  cat <<EOF
input: {paths: ["$2"], url_col: url, caption_col: caption, extra_cols: [kind]}
output: {root: "$WORK/vlc", name: bench, version: "$1"}
samples_per_shard: $SHARD
stages:
  - download: {image_size: 256, resize_mode: $RESIZE_MODE, encode_format: jpg, encode_quality: 95,
               threads: $THREADS, timeout: $TIMEOUT, retries: $RETRIES, allow_networks: [127.0.0.0/8],
               max_connections_per_host: 0}  # one loopback mirror, like img2dataset: no per-host cap
runner: {name: local, workers: $PROCS}
EOF
}

run_tool() {  # $1 = i2d|vlc, $2 = run name (1, 2, ... or startupN), [$3 = URL list]
  local tool=$1 run=$2 urls=${3:-$CORPUS/urls.parquet} out
  local before; before=$(cut -d' ' -f1-3 /proc/loadavg)
  if [ "$tool" = i2d ]; then
    out=$WORK/i2d-$run; rm -rf "$out"
    "$PY" "$REPO/benchmarks/peak_rss.py" "$WORK/rss-i2d-$run.json" -- \
      "$I2D" --url_list "$urls" --input_format parquet \
      --url_col url --caption_col caption --save_additional_columns '["kind"]' \
      --output_format webdataset --output_folder "$out" --image_size 256 --resize_mode "$RESIZE_MODE" \
      --encode_format jpg --encode_quality 95 \
      --processes_count "$PROCS" --thread_count "$THREADS" --number_sample_per_shard "$SHARD" \
      --timeout "$TIMEOUT" --retries "$RETRIES" --enable_wandb False > "$WORK/i2d-$run.log" 2>&1
  else
    rm -rf "$WORK/vlc/bench/r$run" "$WORK/vlc/bench/.r$run.building"
    recipe "r$run" "$urls" > "$WORK/recipe-r$run.yaml"
    "$PY" "$REPO/benchmarks/peak_rss.py" "$WORK/rss-vlc-$run.json" -- \
      "$PY" -m vlcurate.cli build "$WORK/recipe-r$run.yaml" > "$WORK/vlc-$run.log" 2>&1
  fi
  echo "$tool $run $before | $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/load.txt"
  printf '  %-4s run %s: %6.1f s   (loadavg before %s, after %s)\n' "$tool" "$run" \
    "$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['wall_s'])" "$WORK/rss-$tool-$run.json")" \
    "$before" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

"$PY" -c "import importlib.metadata as m; print('img2dataset', m.version('img2dataset'), '| vlcurate', m.version('vlcurate'))"
echo "N=$N runs=$RUNS processes=$PROCS threads=$THREADS shard=$SHARD timeout=$TIMEOUT retries=$RETRIES resize=256/$RESIZE_MODE; $(nproc) cores"
: > "$WORK/load.txt"
# Start-up cost of each tool (processes, imports, Beam): the same command on 8 plain URLs.
"$PY" -c "import pyarrow.parquet as pq, pyarrow.compute as pc, sys; t = pq.read_table(sys.argv[1]); \
pq.write_table(t.filter(pc.equal(t['kind'], 'ok')).slice(0, 8), sys.argv[2])" "$CORPUS/urls.parquet" "$WORK/startup.parquet"
for run in $(seq "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then order="i2d vlc"; else order="vlc i2d"; fi
  for tool in $order; do run_tool "$tool" "$run"; done
  for tool in $order; do run_tool "$tool" "startup$run" "$WORK/startup.parquet"; done
done
kill "$SRV"; wait "$SRV" 2>/dev/null || true; trap - EXIT
"$PY" "$REPO/benchmarks/download_summary.py" "$WORK" "$CORPUS/urls.parquet" "$RUNS"
