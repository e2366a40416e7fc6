#!/usr/bin/env bash
# Serves a keras_hier export with TF-Serving.
#
#   ./serve.sh /path/to/export_base [model_name]
#
# export_base: the folder passed to keras_hier.export_saved_model (holds 1/, 2/, ...).
# Ports: gRPC on GRPC_PORT (default 8500), REST on REST_PORT (default 8501):
#   REST predict:  POST http://localhost:8501/v1/models/<model_name>:predict
#   metadata:      GET  http://localhost:8501/v1/models/<model_name>/metadata
#   gRPC:          localhost:8500 (tensorflow_serving.apis.PredictionService)
# Uses tensorflow_model_server when it is on PATH, else the tensorflow/serving
# container (docker or podman). MODEL_CONFIG=models.config serves a model config
# file (base_path "/models/<model_name>" = export_base, in both branches);
# DRY_RUN=1 prints the command without running it. Paths with commas are refused.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
BASE=$(cd "$1" && pwd)
NAME=${2:-$(basename "$BASE")}
GRPC_PORT=${GRPC_PORT:-8500}
REST_PORT=${REST_PORT:-8501}
IMAGE=${SERVING_IMAGE:-tensorflow/serving:latest}

if [[ "$BASE" == *,* ]]; then
  echo "serve.sh: the export base '$BASE' contains a comma; move it to a path without one" >&2
  exit 1
fi
if ! ls "$BASE" | grep -Eq '^[0-9]+$'; then
  echo "serve.sh: $BASE holds no integer version folder (export with keras_hier.export_saved_model)" >&2
  exit 1
fi
CONFIG=""
if [[ -n "${MODEL_CONFIG:-}" ]]; then
  if [[ ! -f "$MODEL_CONFIG" ]]; then
    echo "serve.sh: MODEL_CONFIG=$MODEL_CONFIG is not a file" >&2
    exit 1
  fi
  CONFIG=$(cd "$(dirname "$MODEL_CONFIG")" && pwd)/$(basename "$MODEL_CONFIG")
  if [[ "$CONFIG" == *,* ]]; then
    echo "serve.sh: the MODEL_CONFIG path '$CONFIG' contains a comma" >&2
    exit 1
  fi
fi

run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "$@"; echo
  else
    exec "$@"
  fi
}

if command -v tensorflow_model_server >/dev/null 2>&1; then
  if [[ -n "$CONFIG" ]]; then
    # The config names container paths (/models/<name>); the binary serves the folder given instead.
    LOCAL_CONFIG=$(mktemp "${TMPDIR:-/tmp}/keras_hier_models.XXXXXX.config")
    sed "s#\"/models/$NAME\"#\"$BASE\"#g" "$CONFIG" > "$LOCAL_CONFIG"
    run tensorflow_model_server --port="$GRPC_PORT" --rest_api_port="$REST_PORT" \
      --model_config_file="$LOCAL_CONFIG" --file_system_poll_wait_seconds=30
  else
    run tensorflow_model_server --port="$GRPC_PORT" --rest_api_port="$REST_PORT" \
      --model_name="$NAME" --model_base_path="$BASE" --file_system_poll_wait_seconds=30
  fi
else
  ENGINE=$(command -v docker || command -v podman || true)
  if [[ -z "$ENGINE" && "${DRY_RUN:-0}" != "1" ]]; then
    echo "serve.sh: neither tensorflow_model_server nor docker/podman found" >&2
    exit 1
  fi
  MOUNTS=(--mount "type=bind,source=$BASE,target=/models/$NAME,readonly")
  ARGS=()
  if [[ -n "$CONFIG" ]]; then
    MOUNTS+=(--mount "type=bind,source=$CONFIG,target=/models/models.config,readonly")
    ARGS=(--model_config_file=/models/models.config --file_system_poll_wait_seconds=30)
  fi
  run "${ENGINE:-docker}" run --rm -p "$GRPC_PORT:8500" -p "$REST_PORT:8501" \
    "${MOUNTS[@]}" -e MODEL_NAME="$NAME" "$IMAGE" "${ARGS[@]}"
fi
