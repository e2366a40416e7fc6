"""Runs a SavedModel through TensorFlow's C++ loader, the one TF-Serving is built on.

The TensorFlow wheel's `libtensorflow_cc.so.2` exports the C API, whose
`TF_LoadSessionFromSavedModel` wraps the C++ `LoadSavedModel` that
TF-Serving calls (session-based restore of the variables, then
`TF_SessionRun` on the signature's tensors). This module drives it with
`ctypes` in a child process that never imports TensorFlow (loading those
libraries with RTLD_GLOBAL and importing tensorflow in one process
crashes). The parent reads the signatures' tensor names from
`saved_model.pb` (`signature_defs`, TensorFlow in the parent) and sends
NumPy arrays to the child.

Example:

```python
from keras_hier.serving_kit.c_loader import CLoader

with CLoader() as loader:                       # one child process, many models
    outputs = loader.run("/models/fashion/1", "serving_default", {"images": x})
```
"""

import ctypes
import os
import pickle
import struct
import subprocess
import sys

import numpy as np

__all__ = ["CLoader", "CLoaderError", "signature_defs", "tensorflow_library_dir"]

# TF_DataType codes (tensorflow/c/tf_datatype.h) <-> NumPy.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 7: object,
           9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items() if v is not object}
_DTYPE_NAMES = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_INT32": "int32", "DT_UINT8": "uint8",
                "DT_INT16": "int16", "DT_INT8": "int8", "DT_STRING": "string", "DT_INT64": "int64",
                "DT_BOOL": "bool", "DT_HALF": "float16", "DT_BFLOAT16": "bfloat16"}
#: TF_Code names (tensorflow/c/tf_status.h), for error messages.
CODE_NAMES = {1: "Cancelled", 2: "Unknown", 3: "InvalidArgument", 4: "DeadlineExceeded", 5: "NotFound",
              6: "AlreadyExists", 7: "PermissionDenied", 8: "ResourceExhausted", 9: "FailedPrecondition",
              10: "Aborted", 11: "OutOfRange", 12: "Unimplemented", 13: "Internal", 14: "Unavailable",
              15: "DataLoss", 16: "Unauthenticated"}
_TSTRING_SIZE = 24  # sizeof(TF_TString)


class CLoaderError(RuntimeError):
    """A status other than OK from the C API; `code` is its name (e.g. `"InvalidArgument"`)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def tensorflow_library_dir():
    """The folder of the installed TensorFlow wheel's shared libraries (TensorFlow not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("TensorFlow is not installed: the C++ loader comes with its wheel")
    return list(spec.submodule_search_locations)[0]


def signature_defs(export_dir, tags=("serve",)):
    """`{signature: {"inputs": {name: (tensor, dtype, shape)}, "outputs": {...}}}` from saved_model.pb.

    Reads the protocol buffer with TensorFlow's `saved_model_pb2` (call it in a
    process that has not loaded the C libraries with RTLD_GLOBAL).
    """
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.core.framework import types_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    for graph in model.meta_graphs:
        if set(tags) <= set(graph.meta_info_def.tags):
            break
    else:
        raise ValueError(f"{export_dir}: no meta graph with tags {list(tags)}")

    def info(tensors):
        out = {}
        for name, tensor in tensors.items():
            dtype = _DTYPE_NAMES.get(types_pb2.DataType.Name(tensor.dtype), types_pb2.DataType.Name(tensor.dtype))
            shape = None if tensor.tensor_shape.unknown_rank else [
                None if d.size < 0 else d.size for d in tensor.tensor_shape.dim]
            out[name] = (tensor.name, dtype, shape)
        return out

    return {key: {"inputs": info(sig.inputs), "outputs": info(sig.outputs), "method": sig.method_name}
            for key, sig in graph.signature_def.items()}


# ------------------------------------------------------------------ the child
class _Api:
    """ctypes bindings of the few C API functions the child needs."""

    def __init__(self, library_dir):
        mode = getattr(os, "RTLD_GLOBAL", 0) | getattr(os, "RTLD_NOW", 0)
        ctypes.CDLL(os.path.join(library_dir, "libtensorflow_framework.so.2"), mode=mode)
        lib = ctypes.CDLL(os.path.join(library_dir, "libtensorflow_cc.so.2"), mode=mode)
        p, i, i64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_size_t
        signatures = {
            "TF_NewStatus": ([], p), "TF_DeleteStatus": ([p], None), "TF_GetCode": ([p], i),
            "TF_Message": ([p], ctypes.c_char_p), "TF_NewGraph": ([], p), "TF_NewSessionOptions": ([], p),
            "TF_LoadSessionFromSavedModel": ([p, p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), i, p, p, p], p),
            "TF_GraphOperationByName": ([p, ctypes.c_char_p], p),
            "TF_SessionRun": ([p, p, p, p, i, p, p, i, p, i, p, p], None),
            "TF_AllocateTensor": ([i, ctypes.POINTER(i64), i, sz], p), "TF_TensorData": ([p], p),
            "TF_NumDims": ([p], i), "TF_Dim": ([p, i], i64), "TF_TensorType": ([p], i),
            "TF_TensorByteSize": ([p], sz), "TF_DeleteTensor": ([p], None),
            "TF_StringInit": ([p], None), "TF_StringCopy": ([p, ctypes.c_char_p, sz], None),
            "TF_StringGetDataPointer": ([p], p), "TF_StringGetSize": ([p], sz),
        }
        for name, (args, result) in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, result
            setattr(self, name[3:], fn)


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


class _Child:
    """Holds loaded sessions; answers `load` / `run` requests (runs in the child process)."""

    def __init__(self, library_dir):
        self.api = _Api(library_dir)
        self.sessions = {}

    def _check(self, status):
        code = self.api.GetCode(status)
        if code:
            message = self.api.Message(status).decode("utf-8", "replace")
            raise CLoaderError(CODE_NAMES.get(code, str(code)), message)

    def load(self, export_dir, tags=("serve",)):
        api, status = self.api, self.api.NewStatus()
        graph = api.NewGraph()
        tag_array = (ctypes.c_char_p * len(tags))(*[t.encode() for t in tags])
        session = api.LoadSessionFromSavedModel(api.NewSessionOptions(), None, export_dir.encode(), tag_array,
                                                len(tags), graph, None, status)
        try:
            self._check(status)
        finally:
            api.DeleteStatus(status)
        self.sessions[export_dir] = (session, graph)

    def _endpoint(self, graph, tensor_name):
        op_name, _, index = tensor_name.partition(":")
        op = self.api.GraphOperationByName(graph, op_name.encode())
        if not op:
            raise CLoaderError("NotFound", f"no operation {op_name!r} in the loaded graph")
        return _Output(op, int(index or 0))

    def _to_tensor(self, array):
        api = self.api
        dims = (ctypes.c_int64 * array.ndim)(*array.shape)
        if array.dtype == object or array.dtype.kind in "SU":
            flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1)]
            tensor = api.AllocateTensor(7, dims, array.ndim, _TSTRING_SIZE * len(flat))
            base = api.TensorData(tensor)
            for k, value in enumerate(flat):
                api.StringInit(base + k * _TSTRING_SIZE)
                api.StringCopy(base + k * _TSTRING_SIZE, value, len(value))
            return tensor
        array = np.ascontiguousarray(array)
        if array.dtype not in _CODES:
            raise CLoaderError("InvalidArgument", f"dtype {array.dtype} is not supported by this loader")
        tensor = api.AllocateTensor(_CODES[array.dtype], dims, array.ndim, array.nbytes)
        ctypes.memmove(api.TensorData(tensor), array.ctypes.data, array.nbytes)
        return tensor

    def _to_array(self, tensor):
        api = self.api
        shape = tuple(api.Dim(tensor, d) for d in range(api.NumDims(tensor)))
        code = api.TensorType(tensor)
        base = api.TensorData(tensor)
        if code == 7:
            count = int(np.prod(shape, dtype=np.int64))
            values = [ctypes.string_at(api.StringGetDataPointer(base + k * _TSTRING_SIZE),
                                       api.StringGetSize(base + k * _TSTRING_SIZE)) for k in range(count)]
            out = np.empty(count, dtype=object)
            out[:] = values
            return out.reshape(shape)
        if code not in _DTYPES:
            raise CLoaderError("Unimplemented", f"output dtype code {code} is not supported by this loader")
        size = api.TensorByteSize(tensor)
        data = ctypes.string_at(base, size) if size else b""
        return np.frombuffer(data, dtype=_DTYPES[code]).reshape(shape).copy()

    def run(self, export_dir, feeds, fetches):
        """`feeds`: {tensor name: array}; `fetches`: [tensor names] -> list of arrays."""
        if export_dir not in self.sessions:
            self.load(export_dir)
        api = self.api
        session, graph = self.sessions[export_dir]
        names = list(feeds)
        inputs = (_Output * len(names))(*[self._endpoint(graph, n) for n in names])
        values = (ctypes.c_void_p * len(names))(*[self._to_tensor(np.asarray(feeds[n])) for n in names])
        outputs = (_Output * len(fetches))(*[self._endpoint(graph, n) for n in fetches])
        results = (ctypes.c_void_p * len(fetches))()
        status = api.NewStatus()
        try:
            api.SessionRun(session, None, inputs, values, len(names), outputs, results, len(fetches),
                           None, 0, None, status)
            self._check(status)
            return [self._to_array(results[k]) for k in range(len(fetches))]
        finally:
            api.DeleteStatus(status)
            for tensor in list(values) + [r for r in results if r]:
                api.DeleteTensor(tensor)


def _serve(stdin, stdout, library_dir):
    """The child's loop: length-prefixed pickles in, length-prefixed pickles out."""
    child = _Child(library_dir)
    while True:
        header = stdin.read(8)
        if len(header) < 8:
            return
        request = pickle.loads(stdin.read(struct.unpack("<Q", header)[0]))
        try:
            if request["op"] == "load":
                child.load(request["dir"])
                answer = {"ok": True}
            else:
                answer = {"ok": True, "outputs": child.run(request["dir"], request["feeds"], request["fetches"])}
        except CLoaderError as error:
            answer = {"ok": False, "code": error.code, "message": error.message}
        except Exception as error:  # reported to the parent, the child keeps serving
            answer = {"ok": False, "code": type(error).__name__, "message": str(error)}
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(struct.pack("<Q", len(data)) + data)
        stdout.flush()


# ------------------------------------------------------------------ the parent
class CLoader:
    """A child process that loads SavedModels with the C++ loader and runs their signatures.

    Args:
        env: optional environment for the child (default: this one, minus
            `PYTHONPATH`-style variables that could import TensorFlow).

    Use as a context manager, or call `close()`. One child serves many
    exports (sessions are kept per export folder).
    """

    def __init__(self, env=None):
        self._defs = {}
        self._library_dir = tensorflow_library_dir()
        env = dict(os.environ if env is None else env)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # -I: isolated mode, so nothing on the user's path is imported; numpy is in site-packages.
        self._process = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), self._library_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def _call(self, request):
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._process.stdin.write(struct.pack("<Q", len(data)) + data)
            self._process.stdin.flush()
            header = self._process.stdout.read(8)
        except BrokenPipeError:
            header = b""
        if len(header) < 8:
            error = self._process.stderr.read().decode("utf-8", "replace")[-3000:]
            raise RuntimeError(f"the C loader process died (exit {self._process.wait()}): {error}")
        answer = pickle.loads(self._process.stdout.read(struct.unpack("<Q", header)[0]))
        if not answer["ok"]:
            raise CLoaderError(answer["code"], answer["message"])
        return answer

    def signatures(self, export_dir):
        """The export's signature defs (cached; see `signature_defs`)."""
        export_dir = os.path.abspath(os.fspath(export_dir))
        if export_dir not in self._defs:
            self._defs[export_dir] = signature_defs(export_dir)
        return self._defs[export_dir]

    def load(self, export_dir):
        """Loads (restores the variables of) an export; raises `CLoaderError` if the C++ loader fails."""
        self._call({"op": "load", "dir": os.path.abspath(os.fspath(export_dir))})

    def run(self, export_dir, signature, inputs):
        """Runs `signature` on `inputs` ({input name: array}); returns {output name: array}."""
        export_dir = os.path.abspath(os.fspath(export_dir))
        definition = self.signatures(export_dir)
        if signature not in definition:
            raise CLoaderError("NotFound", f"signature {signature!r} not in {sorted(definition)}")
        spec = definition[signature]
        unknown = set(inputs) - set(spec["inputs"])
        missing = set(spec["inputs"]) - set(inputs)
        if unknown or missing:
            raise CLoaderError("InvalidArgument", f"signature {signature!r} takes inputs {sorted(spec['inputs'])}; "
                                                  f"got {sorted(inputs)}")
        feeds = {spec["inputs"][name][0]: _as_array(value, spec["inputs"][name][1]) for name, value in inputs.items()}
        names = sorted(spec["outputs"])
        outputs = self._call({"op": "run", "dir": export_dir, "feeds": feeds,
                              "fetches": [spec["outputs"][n][0] for n in names]})["outputs"]
        return dict(zip(names, outputs))

    def close(self):
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_array(value, dtype):
    if dtype == "string":
        array = np.asarray(value, dtype=object)
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1)]
        return out
    return np.asarray(value, dtype=dtype)


if __name__ == "__main__":  # the child: never imports TensorFlow
    _serve(sys.stdin.buffer, sys.stdout.buffer, sys.argv[1])
