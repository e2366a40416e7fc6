"""Code shared by the backend test scripts (run in subprocesses under JAX, PyTorch and TensorFlow).

`PLAIN_MODEL_AND_METRICS` expects `keras`, `np`, `ProxyDRHead`, `tree`, `rng`, `loss`, `metric_set` and
`out` in scope: a plain `keras.Model` holding an EMA head must refuse to fit (recorded in
`out["plain_error"]`), and every streaming metric is updated over two batches (`out["metrics"]`).
"""

PLAIN_MODEL_AND_METRICS = '''
inputs = keras.Input((6,))
plain = keras.Model(inputs, ProxyDRHead(5, proxy_mode="ema")(inputs))
plain.compile(optimizer="adam", loss=loss)
try:
    plain.fit(np.zeros((8, 6), "float32"), np.zeros(8, "int32"), verbose=0)
    out["plain_error"] = None
except RuntimeError as error:
    out["plain_error"] = str(error)
scores = rng.normal(size=(30, 5)).round(1).astype("float32")
labels = rng.integers(0, 5, 30)
out["metrics"] = []
for metric in metric_set():
    metric.update_state(labels[:16], scores[:16])
    metric.update_state(labels[16:], scores[16:])
    out["metrics"].append(float(metric.result()))
'''
