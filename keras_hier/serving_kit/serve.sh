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
# container (docker or podman). Set MODEL_CONFIG=models.config to serve a config
# file instead of a single model; DRY_RUN=1 prints the command without running it.
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

if ! ls "$BASE" | grep -Eq '^[0-9]+$'; then
  echo "serve.sh: $BASE holds no integer version folder (export with keras_hier.export_saved_model)" >&2
  exit 1
fi

run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "$@"; echo
  else
    exec "$@"
  fi
}

if command -v tensorflow_model_server >/dev/null 2>&1; then
  if [[ -n "${MODEL_CONFIG:-}" ]]; then
    run tensorflow_model_server --port="$GRPC_PORT" --rest_api_port="$REST_PORT" \
      --model_config_file="$MODEL_CONFIG" --file_system_poll_wait_seconds=30
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
  run "${ENGINE:-docker}" run --rm -p "$GRPC_PORT:8500" -p "$REST_PORT:8501" \
    --mount "type=bind,source=$BASE,target=/models/$NAME" -e MODEL_NAME="$NAME" "$IMAGE"
fi
