"""Trains a small Keras model under $KERAS_BACKEND with WeightDiffCallback; prints what the tests check (JSON).

Run by test_keras_backends.py in a fresh process per backend (Keras fixes its backend at import).
"""

import json
import sys

import numpy as np


def main(logdir):
    import keras

    from tb_weightdiff import judge, metadata, reader, summary
    from tb_weightdiff.keras import WeightDiffCallback

    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    frozen = keras.layers.Dense(32, activation="relu", name="frozen")
    hidden = frozen(hidden)
    frozen.trainable = False
    outputs = keras.layers.Dense(4, activation="softmax", name="out")(hidden)
    model = keras.Model(inputs, outputs, name="model")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    initial = {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.weights}
    x = np.random.default_rng(0).standard_normal((512, 20)).astype("float32")
    y = x[:, :4].argmax(1)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[WeightDiffCallback(logdir)])
    with reader.open_logdir(logdir, loader="python") as opened:
        series, warnings = reader.read_series(opened)
        result = judge.analyze_logdir(opened)
    step0_matches = all(
        s.summaries[0].stat("fingerprint")
        == metadata.decode(summary.weight_statistics(initial[s.tag])).stat("fingerprint")
        for s in series
    )
    run = result["runs"][0]
    print(json.dumps({
        "backend": keras.backend.backend(),
        "warnings": warnings,
        "steps": run["steps"],
        "updates": run["optimizer"]["updates"],
        "verdicts": {layer["name"]: layer["verdict"] for layer in run["layers"]},
        "step0_matches": step0_matches,
        "tags": sorted(s.tag for s in series),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
