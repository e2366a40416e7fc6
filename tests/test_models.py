"""build_classifier, Classifier.train_step, .keras round trips, mixed precision, MirroredStrategy."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier.layers import NormFaceHead, ProxyDRHead
from keras_hier.losses import CORRLoss, HierarchicalCrossEntropy, SimLoss, SoftLabelCrossEntropy
from keras_hier.metrics import MistakeSeverity
from keras_hier.models import Classifier, build_classifier

TREE = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "a/c/v", "d/e/w", "d/f/u"])
C = TREE.num_classes


def backbone(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(12, activation="relu")], name="backbone")


def toy_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 10)).astype(np.float32), rng.integers(0, C, n)


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_builder_names_layers_and_outputs_float32_logits():
    for head in ("proxydr", "normface", "softmax"):
        model = build_classifier(backbone(), head=head, num_classes=C, embedding_dim=5)
        assert isinstance(model, Classifier)
        assert model.get_layer("embedding").units == 5
        assert model.output_shape == (None, C)
        out = model(toy_data(3)[0])
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    corr = build_classifier(backbone(), head="corr", hierarchy=TREE, embedding_dim=5, mds_steps=50)
    head = corr.get_layer("head")
    assert isinstance(head, NormFaceHead) and head.proxy_mode == "fixed" and float(head.scale) == 1.0
    x = toy_data(4)[0]
    cos = keras.ops.convert_to_numpy(corr(x))
    emb = keras.ops.convert_to_numpy(keras.Model(corr.inputs[0], corr.get_layer("embedding").output)(x))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, emb @ keras.ops.convert_to_numpy(head.proxies).T, atol=1e-5)


def test_builder_accepts_a_head_layer_and_mds_mode_and_checks_class_counts():
    model = build_classifier(backbone(), head=ProxyDRHead(C, name="my_head"), embedding_dim=4)
    assert model.get_layer("head").num_classes == C
    mds = build_classifier(backbone(), head="proxydr", hierarchy=TREE, embedding_dim=4, proxy_mode="mds",
                           dynamic_scale=True, mds_steps=20)
    assert mds.get_layer("head").proxy_mode == "fixed" and mds.get_layer("head").dynamic_scale
    with pytest.raises(ValueError, match="num_classes mismatch: num_classes gives 5, hierarchy gives 6"):
        build_classifier(backbone(), head="normface", num_classes=5, hierarchy=TREE)
    with pytest.raises(ValueError, match="give num_classes"):
        build_classifier(backbone(), head="proxydr")
    with pytest.raises(ValueError, match="head must be one of"):
        build_classifier(backbone(), head="arcface", num_classes=3)
    with pytest.raises(TypeError, match="backbone"):
        build_classifier("resnet", num_classes=3)


def test_fit_runs_the_ema_update_with_the_step_embeddings():
    x, y = toy_data(16)
    model = build_classifier(backbone(1), head="proxydr", num_classes=C, embedding_dim=4, proxy_mode="ema",
                             ema_momentum=0.3)
    head = model.get_layer("head")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=ce())
    embed = keras.Model(model.inputs[0], model.get_layer("embedding").output)
    before = keras.ops.convert_to_numpy(embed(x))  # the forward pass of the (only) step
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    unit = before / np.linalg.norm(before, axis=1, keepdims=True)
    proxies = keras.ops.convert_to_numpy(head._proxies)
    for c in range(C):
        if np.any(y == c):
            mean = unit[y == c].mean(axis=0)
            np.testing.assert_allclose(proxies[c], mean / np.linalg.norm(mean), atol=1e-5)
    assert not np.allclose(keras.ops.convert_to_numpy(embed(x)), before)  # the backbone did train


def test_fit_with_dynamic_scale_changes_only_the_scale_of_fixed_heads():
    x, y = toy_data(32)
    proxies = np.random.default_rng(0).normal(size=(C, 4)).astype(np.float32)
    model = build_classifier(backbone(), head="normface", num_classes=C, embedding_dim=4, proxy_mode="fixed",
                             proxies=proxies, dynamic_scale=True, scale_learning_rate=1e-2)
    head = model.get_layer("head")
    start = float(head.scale)
    model.compile(optimizer="adam", loss=ce())
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert float(head.scale) != pytest.approx(start, abs=1e-4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head._proxies), proxies)


CASES = {
    "proxydr-ema-dynamic+simloss": ("proxydr", dict(proxy_mode="ema", dynamic_scale=True),
                                    lambda: SimLoss.from_hierarchy(TREE, beta=0.5)),
    "normface+dense-simloss": ("normface", dict(distance="arccos"), lambda: SimLoss(TREE.similarity_matrix())),
    "proxydr-mds+hxe": ("proxydr", dict(proxy_mode="mds", hierarchy=TREE, mds_steps=20),
                        lambda: HierarchicalCrossEntropy(TREE, 0.3)),
    "normface-dynamic+soft": ("normface", dict(dynamic_scale=True), lambda: SoftLabelCrossEntropy(TREE, 2.0)),
    "softmax+simloss": ("softmax", {}, lambda: SimLoss.from_hierarchy(TREE, distance="lca_height")),
    "corr+corrloss": ("corr", dict(hierarchy=TREE, mds_steps=20), lambda: CORRLoss()),
}


def test_keras_files_load_in_a_fresh_process_with_identical_outputs(tmp_path):
    """Every head / loss combination, trained, saved, loaded after only `import keras, keras_hier` in a
    fresh process (tests/roundtrip.py): same predictions and same evaluate() loss and metrics; loaded here,
    the compiled state keeps training."""
    from roundtrip import run_serialization_tests

    x, y = toy_data(24)
    cases, models = [], {}
    for case in sorted(CASES):
        head, kwargs, loss = CASES[case]
        model = build_classifier(backbone(), head=head, num_classes=C, embedding_dim=4, **kwargs)
        model.compile(optimizer="adam", loss=loss(), metrics=["accuracy", MistakeSeverity(TREE)])
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        cases.append((model, x, y))
        models[case] = model
    loaded = run_serialization_tests(cases, rtol=1e-5, atol=1e-5)
    assert all({"predict", "evaluate/loss", "evaluate/mistake_severity"} <= set(out) for out in loaded)
    model = models["proxydr-ema-dynamic+simloss"]
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored, Classifier) and type(restored.loss) is type(model.loss)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored.get_layer("head").scale),
                                  keras.ops.convert_to_numpy(model.get_layer("head").scale))
    before = keras.ops.convert_to_numpy(restored.get_layer("head")._proxies).copy()
    restored.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the compiled state, EMA included, keeps training
    assert np.abs(keras.ops.convert_to_numpy(restored.get_layer("head")._proxies) - before).max() > 0


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_gives_finite_float32_losses(policy):
    keras.config.set_dtype_policy(policy)
    try:
        x, y = toy_data(32)
        for head, kwargs, loss in [("proxydr", dict(proxy_mode="ema", dynamic_scale=True),
                                    SimLoss.from_hierarchy(TREE)),
                                   ("normface", dict(dynamic_scale=True), HierarchicalCrossEntropy(TREE, 0.2))]:
            model = build_classifier(backbone(), head=head, num_classes=C, embedding_dim=8, **kwargs)
            assert model.get_layer("embedding").compute_dtype != "float32"
            model.compile(optimizer="adam", loss=loss)
            history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
            assert np.all(np.isfinite(history.history["loss"]))
            out = model(x)
            assert keras.backend.standardize_dtype(out.dtype) == "float32"
            assert np.isfinite(float(model.get_layer("head").scale))
    finally:
        keras.config.set_dtype_policy("float32")


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_hier import Hierarchy, SimLoss, build_classifier

    tree = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "a/c/v", "d/e/w", "d/f/u"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 10)).astype("float32"), rng.integers(0, 6, 64)

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            backbone = keras.Sequential([keras.Input((10,)), keras.layers.Dense(12, activation="relu")])
            model = build_classifier(backbone, head="proxydr", num_classes=6, embedding_dim=4,
                                     proxy_mode="ema", dynamic_scale=True, scale_learning_rate=1e-2)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SimLoss.from_hierarchy(tree))
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        head = model.get_layer("head")
        variable = head._proxies.value
        replicas = [v.numpy().tolist() for v in getattr(variable, "values", [variable])]
        return dict(loss=history.history["loss"], proxies=head.proxies.numpy().tolist(),
                    scale=float(head.scale), visited=head._visited.numpy().tolist(), replicas=replicas,
                    embedding=model.get_layer("embedding").kernel.numpy().tolist())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = dict(replicas_in_sync=mirrored.num_replicas_in_sync, mirrored=run(mirrored),
               single=run(tf.distribute.get_strategy()))
    print("RESULT" + json.dumps(out))
""")


def test_mirrored_strategy_on_two_cpus_matches_a_single_device_run():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    out = json.loads(done.stdout.split("RESULT", 1)[1])
    assert out["replicas_in_sync"] == 2
    mirrored, single = out["mirrored"], out["single"]
    assert len(mirrored["replicas"]) == 2
    np.testing.assert_array_equal(mirrored["replicas"][0], mirrored["replicas"][1])
    assert np.all(np.isfinite(mirrored["loss"]))
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["proxies"], single["proxies"], atol=1e-4)
    np.testing.assert_allclose(mirrored["scale"], single["scale"], rtol=1e-5)
    np.testing.assert_array_equal(mirrored["visited"], single["visited"])
    np.testing.assert_allclose(mirrored["embedding"], single["embedding"], atol=1e-4)
    assert mirrored["scale"] != pytest.approx(ProxyDRHead(6, dynamic_scale=True).initial_scale, abs=1e-4)


@pytest.mark.parametrize("build", ["functional", "subclass_of_classifier"])
def test_classifier_updates_ema_and_scale_however_it_is_built(build):
    """Classifier(inputs, outputs) written by hand trains the after-step updates like build_classifier."""
    x, y = toy_data(32)
    inputs = keras.Input((10,))
    head = NormFaceHead(C, proxy_mode="ema", dynamic_scale=True, name="head")
    outputs = head(keras.layers.Dense(4)(backbone()(inputs)))
    model = Classifier(inputs, outputs) if build == "functional" else type("Mine", (Classifier,), {})(inputs, outputs)
    model.compile("adam", ce())
    p0, s0 = keras.ops.convert_to_numpy(head._proxies).copy(), float(head.scale)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.abs(keras.ops.convert_to_numpy(head._proxies) - p0).max() > 1e-3
    assert float(head.scale) != s0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head._visited), np.isin(np.arange(C), y))
