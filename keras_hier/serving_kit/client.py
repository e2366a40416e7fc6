"""Sends images to a served keras_hier model and prints hierarchy-consistent predictions.

REST (default; standard library and NumPy only):
    keras-hier-client --url http://localhost:8501/v1/models/fashion shoe.png bag.jpg photos/

gRPC (optional extra: pip install keras_hier[grpc]):
    keras-hier-client --grpc localhost:8500 --model fashion shoe.png

Images (files, or every .jpg/.jpeg/.png/.bmp/.gif in a folder) are sent as
encoded bytes to the `serving_bytes` signature, which decodes and resizes them
inside the model (REST: `{"instances": [{"image_bytes": {"b64": ...}}, ...]}`).
Each answer lists the predicted class, its ancestor at every level with the
node probability, and the back-off prediction when the model was exported
with a threshold.
"""

import argparse
import json
import os
import sys

from keras_hier.serving_kit.rest import columns_of, make_request, post_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def image_files(paths):
    """Files named on the command line, folders expanded (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    if not files:
        raise ValueError(f"no images found in {paths}")
    return files


def predict_rest(url, encoded, signature="serving_bytes"):
    """Columns `{output: [per image]}` from TF-Serving's REST predict API."""
    body = make_request(encoded, "image_bytes", "instances", signature)
    return columns_of(post_json(url.rstrip("/") + ":predict", body))


def predict_grpc(target, model_name, encoded, signature="serving_bytes", timeout=30.0):
    """The same columns through gRPC (needs tensorflow and tensorflow-serving-api)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(encoded, dtype=tf.string))
    with grpc.insecure_channel(target) as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout)
    columns = {}
    for name, proto in answer.outputs.items():
        value = tf.make_ndarray(proto)
        columns[name] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()] \
            if value.dtype == object else value.tolist()
    return columns


def describe(columns, index):
    """One readable line per image: chain of level names with probabilities."""
    levels = sorted(int(name.split("_")[1]) for name in columns if name.startswith("level_") and name.endswith("_names"))
    chain = []
    for level in levels:
        name = columns[f"level_{level}_names"][index]
        if chain and chain[-1][0] == name:  # a shallow leaf repeats itself on deeper levels
            continue
        chain.append((name, float(columns[f"level_{level}_scores"][index])))
    text = " > ".join(f"{name} ({score:.2f})" for name, score in chain)
    text = f"{columns['classes'][index]} [{float(columns['scores'][index]):.3f}]  {text}"
    if "prediction" in columns:
        text += (f"  => {columns['prediction'][index]} (level {int(columns['prediction_level'][index])}, "
                 f"{float(columns['prediction_score'][index]):.2f})")
    return text


def main(argv=None):
    """Console script `keras-hier-client`."""
    parser = argparse.ArgumentParser(prog="keras-hier-client", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files or folders")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="REST model URL, e.g. http://localhost:8501/v1/models/NAME")
    target.add_argument("--grpc", help="gRPC address host:port, e.g. localhost:8500 (needs --model)")
    parser.add_argument("--model", help="model name (gRPC)")
    parser.add_argument("--batch", type=int, default=32, help="images per request")
    parser.add_argument("--json", action="store_true", help="print the raw answers as JSON lines")
    args = parser.parse_args(argv)
    if args.grpc and not args.model:
        parser.error("--grpc needs --model NAME")
    files = image_files(args.images)
    for start in range(0, len(files), args.batch):
        chunk = files[start:start + args.batch]
        encoded = []
        for path in chunk:
            with open(path, "rb") as f:
                encoded.append(f.read())
        columns = predict_rest(args.url, encoded) if args.url else predict_grpc(args.grpc, args.model, encoded)
        for i, path in enumerate(chunk):
            if args.json:
                print(json.dumps({"file": path, **{k: v[i] for k, v in columns.items()}}))
            else:
                print(f"{path}: {describe(columns, i)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
