"""keras_hier.evaluate under other Keras backends (a fresh process each)."""

import os


def test_tf_data_under_jax(tmp_path):
    """evaluate iterates a tf.data dataset as NumPy, so it works under KERAS_BACKEND=jax."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, keras, tensorflow as tf, keras_hier\n"
        "assert keras.backend.backend() == 'jax'\n"
        "h = keras_hier.Hierarchy.from_paths(['a/x', 'a/y', 'b/z', 'b/w'])\n"
        "inputs = keras.Input((3,))\n"
        "model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(2, name='embedding')(inputs)))\n"
        "x = np.random.default_rng(0).normal(size=(20, 3)).astype('float32'); y = np.arange(20) % 4\n"
        "ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)\n"
        "a = keras_hier.evaluate(model, ds, h, ks=(1,), n_permutations=3)\n"
        "b = keras_hier.evaluate(model, (x, y), h, ks=(1,), n_permutations=3)\n"
        "assert a['classification'] == b['classification'], (a, b)\n"
        "print('ok', a['classification']['decoders']['expected_cost']['accuracy'])\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
