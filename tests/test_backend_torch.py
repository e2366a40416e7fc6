"""Losses, heads (EMA and dynamic scale included), metrics and `.keras` files on the PyTorch backend.

Runs the same script in a subprocess with KERAS_BACKEND=torch and with
KERAS_BACKEND=tensorflow (the backend is fixed per process) and compares.
Needs `torch` (the `test` extra pins the CPU build `torch==2.13.0`).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from backend_snippets import PLAIN_MODEL_AND_METRICS

pytest.importorskip("torch")

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from keras import ops
    backend = keras.backend.backend()
    from keras_hier import Hierarchy, build_classifier
    from keras_hier.losses import SimLoss, HierarchicalCrossEntropy, SoftLabelCrossEntropy, CORRLoss
    from keras_hier.layers import NormFaceHead, ProxyDRHead
    from keras_hier.metrics import (MistakeSeverity, AverageHierarchicalDistanceAtK, LevelAccuracy,
                                    SuperclassAccuracy)

    def value_and_grad(f, v):
        if backend == "torch":
            import torch
            t = torch.tensor(v, requires_grad=True)
            r = f(t)
            r.backward()
            return float(r.detach()), t.grad.numpy()
        import tensorflow as tf
        t = tf.constant(v)
        with tf.GradientTape() as tape:
            tape.watch(t)
            r = f(t)
        return float(r), tape.gradient(r, t).numpy()

    tree = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "q", "d/e/f/w"])
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(4, 5)) * 2).astype("float32")
    y = np.array([0, 2, 3, 4])
    out = {"losses": {}, "errors": {}}
    losses = dict(simloss=SimLoss.from_hierarchy(tree), dense=SimLoss(tree.similarity_matrix()),
                  hxe=HierarchicalCrossEntropy(tree, 0.4), soft=SoftLabelCrossEntropy(tree, 1.5), corr=CORRLoss())
    for name, loss in losses.items():
        try:
            value, grad = value_and_grad(lambda v: loss(y, v), z)
            out["losses"][name] = dict(value=value, grad=grad.tolist())
        except Exception as error:
            out["errors"][name] = f"{type(error).__name__}: {error}"[:300]
    x = rng.normal(size=(4, 6)).astype("float32")
    w = rng.normal(size=(5, 6)).astype("float32")
    for name, cls in (("normface", NormFaceHead), ("proxydr", ProxyDRHead)):
        head = cls(5, proxies=w, scale=5.0)
        value, grad = value_and_grad(lambda v: ops.sum(head(v) ** 2), x)
        out[name] = dict(logits=np.asarray(ops.convert_to_numpy(head(x))).tolist(), grad=grad.tolist())
    def metric_set():
        return [MistakeSeverity(tree), AverageHierarchicalDistanceAtK(tree, k=2, distance="lca_height"),
                LevelAccuracy(tree, 0), LevelAccuracy(tree, 1, marginal=True), SuperclassAccuracy(tree)]
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu")])
    loss = losses["dense"]  # a loss that works on every backend (see test_tree_simloss_on_torch)
    out["ema"] = {}
    for mode, dynamic in (("ema", True), ("learned", True)):
        model = build_classifier(backbone, "proxydr", num_classes=5, embedding_dim=4, proxy_mode=mode,
                                 dynamic_scale=dynamic)
        model.compile(optimizer="adam", loss=loss, metrics=metric_set())
        head = model.get_layer("head")
        p0, s0 = np.asarray(ops.convert_to_numpy(head._proxies)).copy(), float(head.scale)
        history = model.fit(rng.normal(size=(24, 6)).astype("float32"), np.arange(24) % 4, epochs=2,
                            batch_size=8, verbose=0)
        out["ema"][mode] = dict(
            proxy_change=float(np.abs(np.asarray(ops.convert_to_numpy(head._proxies)) - p0).max()),
            visited=np.asarray(ops.convert_to_numpy(head._visited)).tolist() if mode == "ema" else None,
            scale_change=abs(float(head.scale) - s0),
            finite=bool(all(np.all(np.isfinite(v)) for v in history.history.values())),
            logs=sorted(history.history))
        if mode == "ema":
            model.save(sys.argv[1])
            probe = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
            out["saved_predict"] = np.asarray(model.predict(probe, verbose=0)).tolist()
""") + PLAIN_MODEL_AND_METRICS + textwrap.dedent("""
    print("RESULT" + json.dumps(out))
""")

LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras, keras_hier
    model = keras.models.load_model(sys.argv[1])
    x = np.asarray(json.loads(sys.argv[2]), dtype="float32")
    print("RESULT" + json.dumps(np.asarray(model.predict(x, verbose=0)).tolist()))
""")


def run(script, backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT", 1)[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch")
    torch_out = run(SCRIPT, "torch", str(folder / "torch.keras"))
    tf_out = run(SCRIPT, "tensorflow", str(folder / "tf.keras"))
    return torch_out, tf_out, folder


def test_losses_heads_metrics_and_updates_agree_with_tensorflow(results):
    torch_out, tf_out, _ = results
    assert not tf_out["errors"]
    for name in ("dense", "hxe", "soft", "corr"):
        assert name not in torch_out["errors"], torch_out["errors"].get(name)
        assert torch_out["losses"][name]["value"] == pytest.approx(tf_out["losses"][name]["value"], rel=1e-5)
        np.testing.assert_allclose(torch_out["losses"][name]["grad"], tf_out["losses"][name]["grad"], atol=1e-5)
    for name in ("normface", "proxydr"):
        np.testing.assert_allclose(torch_out[name]["logits"], tf_out[name]["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(torch_out[name]["grad"], tf_out[name]["grad"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch_out["metrics"], tf_out["metrics"], rtol=1e-6)
    for out in (torch_out, tf_out):
        for mode, result in out["ema"].items():
            assert result["finite"] and result["proxy_change"] > 1e-3 and result["scale_change"] > 0, mode
            assert {"mistake_severity", "ahd_at_2", "level_1_accuracy"} <= set(result["logs"])
        assert out["ema"]["ema"]["visited"] == [1, 1, 1, 1, 0]
        assert "keras_hier.models.Classifier" in out["plain_error"]


def test_keras_files_cross_between_torch_and_tensorflow(results):
    """Saved under torch, loaded under TensorFlow after `import keras, keras_hier` (and the reverse)."""
    torch_out, tf_out, folder = results
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    x_json = json.dumps(x.tolist())
    assert run(LOADER, "tensorflow", str(folder / "torch.keras"), x_json) == pytest.approx(
        np.asarray(torch_out["saved_predict"]), rel=1e-4, abs=1e-5)
    assert run(LOADER, "torch", str(folder / "tf.keras"), x_json) == pytest.approx(
        np.asarray(tf_out["saved_predict"]), rel=1e-4, abs=1e-5)


def test_tree_simloss_on_torch(results):
    torch_out, tf_out, _ = results
    if "simloss" in torch_out["errors"]:
        pytest.xfail("tree-factorised SimLoss on torch: " + torch_out["errors"]["simloss"]
                     + " (keras_hier/losses.py multiplies a torch tensor by a NumPy table)")
    assert torch_out["losses"]["simloss"]["value"] == pytest.approx(tf_out["losses"]["simloss"]["value"], rel=1e-5)
    np.testing.assert_allclose(torch_out["losses"]["simloss"]["grad"], tf_out["losses"]["simloss"]["grad"],
                               atol=1e-5)
