"""The deployment kit of a keras_hier export, installed with the package.

- `serve.sh` (console script `keras-hier-serve`): runs TF-Serving on an
  export base (the `tensorflow_model_server` binary, else the
  tensorflow/serving container); `models.config` is an example model config.
- `client.py` (`keras-hier-client`): sends images to a served model (REST or
  gRPC) and prints hierarchy-consistent answers.
- `smoke_test.py` (`keras-hier-smoke-test`): checks a served model (or, with
  `--local`, the export run by TensorFlow's C++ loader) answers consistently
  with its hierarchy and better than chance on labelled examples.
- `rest.py`: TF-Serving's REST JSON mapping; `c_loader.py`: TensorFlow's C++
  SavedModel loader driven through the C API (what TF-Serving runs).

The repository's `export/` folder holds thin wrappers of the same files.
"""

import os
import sys

__all__ = ["KIT_DIR", "SERVE_SH", "MODELS_CONFIG", "serve_main"]

KIT_DIR = os.path.dirname(os.path.abspath(__file__))
SERVE_SH = os.path.join(KIT_DIR, "serve.sh")
MODELS_CONFIG = os.path.join(KIT_DIR, "models.config")


def serve_main(argv=None):
    """Console script `keras-hier-serve`: runs the packaged `serve.sh` with the given arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    os.execvp("bash", ["bash", SERVE_SH, *argv])
