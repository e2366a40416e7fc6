"""Losses, heads (EMA and dynamic scale included), metrics and `.keras` files on the JAX backend.

Runs in a subprocess with KERAS_BACKEND=jax (the backend is fixed per process)
and compares with the same script on TensorFlow. Needs `jax` (the `test` extra).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from backend_snippets import PLAIN_MODEL_AND_METRICS

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import jax, jax.numpy as jnp
    import keras
    assert keras.backend.backend() == "jax"
    from keras_hier import Hierarchy, build_classifier
    from keras_hier.losses import SimLoss, HierarchicalCrossEntropy, SoftLabelCrossEntropy, CORRLoss
    from keras_hier.layers import NormFaceHead, ProxyDRHead
    from keras_hier.similarity import mds_proxies

    tree = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "q", "d/e/f/w"])
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5)).astype("float32") * 2
    y = np.array([0, 2, 3, 4])
    out = {}
    losses = dict(simloss=SimLoss.from_hierarchy(tree), dense=SimLoss(tree.similarity_matrix()),
                  hxe=HierarchicalCrossEntropy(tree, 0.4), soft=SoftLabelCrossEntropy(tree, 1.5),
                  corr=CORRLoss())
    from keras_hier.ops import TreePlan
    TreePlan.MATMUL_SIZE, TreePlan.FLAT_PAIRS = -1, -1  # the large-tree schedule on a fresh tree
    cascade_tree = Hierarchy.from_dict(tree.to_dict())
    losses["simloss_cascade"] = SimLoss.from_hierarchy(cascade_tree)
    losses["hxe_cascade"] = HierarchicalCrossEntropy(cascade_tree, 0.4)
    for name, loss in losses.items():
        value, grad = jax.value_and_grad(lambda v: loss(y, v))(jnp.asarray(z))
        jitted = jax.jit(lambda v: loss(y, v))(jnp.asarray(z))
        out[name] = dict(value=float(value), jit=float(jitted), grad=np.asarray(grad).tolist())
    x = rng.normal(size=(4, 6)).astype("float32")
    w = rng.normal(size=(5, 6)).astype("float32")
    assert abs(out["simloss_cascade"]["value"] - out["simloss"]["value"]) < 1e-5
    for name, cls in (("normface", NormFaceHead), ("proxydr", ProxyDRHead)):
        head = cls(5, proxies=w, scale=5.0)
        head.build((None, 6))
        logits = np.asarray(head(x)).tolist()
        grad = jax.grad(lambda v: jnp.sum(head(v) ** 2))(jnp.asarray(x))
        out[name] = dict(logits=logits, grad=np.asarray(grad).tolist())
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu")])
    model = build_classifier(backbone, "proxydr", num_classes=5, embedding_dim=4)
    model.compile(optimizer="adam", loss=SimLoss.from_hierarchy(tree))
    history = model.fit(rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 5, 32), epochs=2,
                        batch_size=8, verbose=0)
    out["fit_loss"] = history.history["loss"]
    from keras_hier.metrics import (MistakeSeverity, AverageHierarchicalDistanceAtK, LevelAccuracy,
                                    SuperclassAccuracy)
    def metric_set():
        return [MistakeSeverity(tree), AverageHierarchicalDistanceAtK(tree, k=2, distance="lca_height"),
                LevelAccuracy(tree, 0), LevelAccuracy(tree, 1, marginal=True), SuperclassAccuracy(tree)]
    out["ema"] = {}
    for mode, dynamic in (("ema", True), ("learned", True)):
        model = build_classifier(backbone, "proxydr", num_classes=5, embedding_dim=4, proxy_mode=mode,
                                 dynamic_scale=dynamic)
        model.compile(optimizer="adam", loss=SimLoss.from_hierarchy(tree), metrics=metric_set())
        head = model.get_layer("head")
        p0, s0 = np.asarray(head._proxies.value).copy(), float(head.scale)
        history = model.fit(rng.normal(size=(24, 6)).astype("float32"), np.arange(24) % 4, epochs=1,
                            batch_size=8, verbose=0)
        out["ema"][f"{mode}-{dynamic}"] = dict(
            proxy_change=float(np.abs(np.asarray(head._proxies.value) - p0).max()),
            visited=np.asarray(head._visited.value).tolist() if mode == "ema" else None,
            scale_change=abs(float(head.scale) - s0),
            finite=bool(all(np.all(np.isfinite(v)) for v in history.history.values())),
            logs=sorted(history.history))
    loss = SimLoss.from_hierarchy(tree)
""") + PLAIN_MODEL_AND_METRICS + textwrap.dedent("""
    proxies, stress = mds_proxies(tree, 8, steps=50, seed=0)
    out["mds"] = dict(norms=np.linalg.norm(proxies, axis=1).tolist(), stress=stress)
    print("RESULT" + json.dumps(out))
""")

TF_SCRIPT = SCRIPT.replace('assert keras.backend.backend() == "jax"', "")


def run(script, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    if backend == "tensorflow":  # the same numbers from TensorFlow's autodiff
        script = script.replace("import jax, jax.numpy as jnp", "import tensorflow as tf")
        script = textwrap.dedent("""
            import tensorflow as tf
            class _J:
                @staticmethod
                def value_and_grad(f):
                    def g(v):
                        v = tf.constant(v)
                        with tf.GradientTape() as t:
                            t.watch(v)
                            r = f(v)
                        return r, t.gradient(r, v)
                    return g
                @staticmethod
                def grad(f):
                    return lambda v: _J.value_and_grad(f)(v)[1]
                @staticmethod
                def jit(f):
                    return tf.function(f)
            jax = _J
            class jnp:
                asarray = staticmethod(tf.constant)
                sum = staticmethod(tf.reduce_sum)
        """) + script.replace("import tensorflow as tf\\n", "")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT", 1)[1])


def test_losses_heads_and_fit_agree_between_jax_and_tensorflow():
    jax_out = run(SCRIPT, "jax")
    tf_out = run(TF_SCRIPT, "tensorflow")
    for name in ("simloss", "dense", "hxe", "soft", "corr", "simloss_cascade", "hxe_cascade"):
        assert jax_out[name]["value"] == pytest.approx(tf_out[name]["value"], rel=1e-5), name
        assert jax_out[name]["jit"] == pytest.approx(jax_out[name]["value"], rel=1e-5), name
        np.testing.assert_allclose(jax_out[name]["grad"], tf_out[name]["grad"], atol=1e-5, err_msg=name)
    for name in ("normface", "proxydr"):
        np.testing.assert_allclose(jax_out[name]["logits"], tf_out[name]["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jax_out[name]["grad"], tf_out[name]["grad"], rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(jax_out["fit_loss"]))
    for out in (jax_out, tf_out):  # EMA proxies and the dynamic scale move on both backends
        for key, result in out["ema"].items():
            mode, dynamic = key.split("-")
            assert result["finite"], key
            assert result["proxy_change"] > 1e-3, key
            assert (result["scale_change"] > 0) == (dynamic == "True"), key
            if mode == "ema":
                assert result["visited"] == [1, 1, 1, 1, 0], key  # labels 0..3 seen, class 4 never
            assert {"mistake_severity", "level_0_accuracy", "superclass_accuracy"} <= set(result["logs"])
        assert "keras_hier.models.Classifier" in out["plain_error"]
    np.testing.assert_allclose(jax_out["metrics"], tf_out["metrics"], rtol=1e-6)
    np.testing.assert_allclose(jax_out["mds"]["norms"], 1.0, rtol=1e-5)
    assert np.isfinite(jax_out["mds"]["stress"])


def test_keras_file_saved_under_tensorflow_loads_under_jax():
    """A model, heads and metrics saved here load after `import keras, keras_hier` with KERAS_BACKEND=jax."""
    import keras
    from roundtrip import make_hard_tree, run_serialization_tests

    import keras_hier

    h = make_hard_tree()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 6)).astype("float32")
    y = rng.integers(0, h.num_classes, 12)
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu")])
    model = keras_hier.build_classifier(backbone, "normface", hierarchy=h, embedding_dim=4, proxy_mode="ema",
                                        dynamic_scale=True)
    model.compile("adam", keras_hier.SimLoss.from_hierarchy(h),
                  metrics=[keras_hier.MistakeSeverity(h), keras_hier.LevelAccuracy(h, 1)])
    model.fit(x, y, epochs=1, batch_size=6, verbose=0)
    scores = rng.normal(size=(12, h.num_classes)).astype("float32")
    run_serialization_tests([(model, x, y), (keras_hier.AverageHierarchicalDistanceAtK(h, k=3), scores, y)],
                            backend="jax", rtol=1e-4, atol=1e-5)
