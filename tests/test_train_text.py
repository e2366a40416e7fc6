"""keras-hier-train on texts (the WordNet gloss benchmark) and with KerasHub backbones.

A tiny gloss run goes through the whole recipe (train, evaluate, report,
export), and its export answers plain strings through TensorFlow's C++
loader (TF-Serving's) with the class ids of `model.predict`.
"""

import json
import os

import numpy as np
import pytest

from keras_hier.recipes import configs
from keras_hier.recipes import train as recipe

GLOSSES = ["a domestic animal that barks", "a small domesticated feline",
           "a large motor vehicle for carrying loads", "a tool for driving nails"]


def _text_args(out, *extra):
    return ["--dataset", "wordnet_glosses", "--backbone", "text_bag", "--backbone-kwargs",
            '{"embedding_dim": 8, "max_tokens": 3000}', "--embedding-dim", "8", "--max-examples", "420",
            "--epochs", "1", "--batch-size", "64", "--lr", "0.01", "--n-permutations", "5", "--no-figures",
            "--verbose", "0", "--out", str(out), *extra]


def test_text_bag_on_glosses_trains_reports_and_exports_a_string_model(tmp_path):
    import keras
    import tensorflow as tf

    from keras_hier.serving_kit import smoke_test
    from keras_hier.serving_kit.c_loader import CLoader

    out = tmp_path / "run"
    assert recipe.main(_text_args(out)) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["dataset"] == "wordnet_glosses" and stored["backbone"] == "text_bag"
    assert (out / "report" / "report.md").is_file()
    results = json.loads((out / "report" / "results.json").read_text())
    assert 0 <= results["classification"]["accuracy"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    export = summary["export"]
    assert os.path.isfile(os.path.join(export, "saved_model.pb"))

    # the model rebuilt as a resumed run builds it: the vocabulary is adapted to the unshuffled
    # training split, so the best weights' embedding rows mean the same tokens
    config, _ = recipe.config_from_args(_text_args(out))
    keras.utils.set_random_seed(config["seed"])
    train, _, plain = recipe.load_data(config)
    model = recipe.build_model(config, train.hierarchy, train.input_shape, texts=plain.map(lambda x, y: x))
    model.load_weights(out / "best.weights.h5")
    expected = model.predict(tf.constant(GLOSSES), verbose=0).argmax(axis=1)
    with CLoader() as loader:
        (name, spec), = loader.signatures(export)["serving_default"]["inputs"].items()  # one string input
        assert spec[1] == "string", spec
        answer = loader.run(export, "serving_default", {name: np.array(GLOSSES, dtype=object)})
        assert np.asarray(answer["class_ids"]).tolist() == expected.tolist()
        rest = smoke_test.CModel(export, loader).predict({"instances": GLOSSES[:2]})
    assert [row["class_ids"] for row in rest["predictions"]] == expected[:2].tolist()


def test_text_options_are_parsed_and_checked():
    config, _ = recipe.config_from_args(["--config", "cpu_glosses", "--dataset-kwargs", '{"depth": 4}',
                                         "--backbone", "text_cnn"])
    assert (config["dataset"], config["backbone"], config["dataset_kwargs"]) == \
        ("wordnet_glosses", "text_cnn", {"depth": 4})
    configs.validate_config(config)
    from keras_hier.backbones import BACKBONES, TEXT_BACKBONES

    assert set(configs.TEXT_BACKBONE_NAMES) == set(TEXT_BACKBONES)
    assert set(configs.IMAGE_BACKBONE_NAMES) == set(BACKBONES)
    bad = {"augment": True}, {"backbone": "small_cnn"}, {"dataset": "cifar10"}, \
        {"backbone_weights": "w.h5"}, {"backbone": "bert"}, {"backbone": "keras_hub:"}
    for change in bad:
        with pytest.raises(ValueError) as err:
            configs.validate_config({**config, **change})
        assert list(change)[0] in str(err.value) or "text" in str(err.value), (change, err.value)
    with pytest.raises(ValueError, match="augment"):
        configs.validate_config({**config, "augment": True})
    with pytest.raises(ValueError, match="dataset_kwargs"):
        configs.validate_config({**configs.get_config("cpu_small"), "dataset_kwargs": {"depth": 3}})
    with pytest.raises(ValueError, match=r"takes no argument\(s\) \['filters'\]"):
        recipe.check_backbone_kwargs({**config, "backbone": "text_bag", "backbone_kwargs": {"filters": 3}})
    with pytest.raises(ValueError, match="token_ids"):  # set by the recipe, never by --backbone-kwargs
        recipe.check_backbone_kwargs({**config, "backbone_kwargs": {"token_ids": True}})
    with pytest.raises(SystemExit):
        recipe.config_from_args(["--backbone", "bert"])


def test_main_refuses_augment_and_image_backbones_for_texts(tmp_path, capsys):
    for extra in (["--augment"], ["--backbone", "small_cnn"]):
        assert recipe.main(_text_args(tmp_path / "run", *extra)) == 2
        err = capsys.readouterr().err
        assert "keras-hier-train: error: invalid training config" in err and "text" in err, err
        assert not (tmp_path / "run").exists()
    text = recipe.build_parser().format_help()
    assert "wordnet_glosses" in text and "text_bag" in text and "keras_hub:" in text


def test_load_dataset_dispatches_glosses_with_its_options():
    from keras_hier.data import load_dataset
    from keras_hier.glosses import load_glosses

    train = load_dataset("wordnet_glosses", "train", validation_split=0.1, max_examples=420, depth=4,
                         min_count=200, batch_size=32)
    reference = load_glosses(depth=4, min_count=200, max_per_class=4)
    assert train.input_shape == () and train.hierarchy == reference.hierarchy
    assert train.num_examples == len(reference.train[1]) and train.num_validation == len(reference.validation[1])
    texts, labels = next(iter(load_dataset("wordnet_glosses", "test", shuffle=False, max_examples=420, depth=4,
                                           min_count=200, batch_size=1000).dataset))
    assert [t.decode() for t in texts.numpy()] == reference.test[0].tolist()
    assert labels.numpy().tolist() == reference.test[1].tolist()
    # the recipe's test split comes from the same subsample (disjoint from training), cut to
    # --max-test-examples; the vocabulary source is the training split, unshuffled
    config = configs.get_config("cpu_small", dataset="wordnet_glosses", backbone="text_bag", max_examples=420,
                                max_test_examples=20, dataset_kwargs={"depth": 4, "min_count": 200})
    train, test, plain = recipe.load_data(config)
    assert test.num_examples == 20
    test_texts = np.concatenate([x.numpy() for x, _ in test.dataset]).astype(str)
    assert test_texts.tolist() == reference.test[0][:20].tolist()
    plain_texts = np.concatenate([x.numpy() for x, _ in plain]).astype(str)
    assert plain_texts.tolist() == reference.train[0].tolist()
    assert not set(reference.synsets["train"]) & set(reference.synsets["test"])
    cnn = {**config, "backbone": "text_cnn", "embedding_dim": 4,
           "backbone_kwargs": {"embedding_dim": 4, "filters": 3, "kernel_sizes": [2, 3]}}
    model = recipe.build_model(cnn, train.hierarchy, train.input_shape, texts=plain.map(lambda x, y: x))
    assert model.predict(np.array(GLOSSES, dtype=object), verbose=0).shape == (4, train.hierarchy.num_classes)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depht'\]"):
        load_dataset("wordnet_glosses", depht=4)
    with pytest.raises(ValueError, match="only by 'wordnet_glosses'"):
        load_dataset("cifar10", depth=4)


# ------------------------------------------------------------------------- KerasHub
HUB_CONFIG = dict(input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
                  stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block")


def _tiny_images(root):
    from test_train import _dataset

    return str(_dataset(root, n_train=40, n_test=20))


def _hub_weights(path):
    """A ResNetBackbone's weights, moved away from their initial values, saved to `path`."""
    keras_hub = pytest.importorskip("keras_hub")
    hub = keras_hub.models.ResNetBackbone(image_shape=(8, 8, 3), **HUB_CONFIG)
    rng = np.random.default_rng(0)
    for variable in hub.weights:
        variable.assign(variable + rng.normal(0, 0.1, variable.shape).astype(variable.dtype))
    hub.save_weights(str(path))
    return [np.array(w) for w in hub.weights]


def test_keras_hub_backbone_takes_local_weights_and_trains(tmp_path):
    import keras

    saved = _hub_weights(tmp_path / "hub.weights.h5")
    args = ["--dataset", _tiny_images(tmp_path / "data"), "--backbone", "keras_hub:ResNetBackbone",
            "--backbone-kwargs", json.dumps({"config": HUB_CONFIG}), "--backbone-weights",
            str(tmp_path / "hub.weights.h5"), "--embedding-dim", "4", "--epochs", "1", "--batch-size", "20",
            "--validation-split", "0.25", "--no-evaluate", "--no-export", "--precise-bn-batches", "0",
            "--verbose", "0", "--out", str(tmp_path / "run")]
    config, out = recipe.config_from_args(args)
    assert config["backbone"] == "keras_hub:ResNetBackbone"
    model = recipe.build_model(config, recipe.load_data(config)[0].hierarchy, (8, 8, 3))
    hub = next(la for la in model._flatten_layers() if type(la).__name__ == "ResNetBackbone")
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(saved, hub.weights))
    # a local preset folder holds its own weights
    folder = tmp_path / "preset"
    keras_hub = pytest.importorskip("keras_hub")
    fresh = keras_hub.models.ResNetBackbone(image_shape=(8, 8, 3), **HUB_CONFIG)
    fresh.load_weights(str(tmp_path / "hub.weights.h5"))
    fresh.save_to_preset(str(folder))
    from_folder = recipe.build_model({**config, "backbone": f"keras_hub:{folder}", "backbone_weights": None,
                                      "backbone_kwargs": {}}, recipe.load_data(config)[0].hierarchy, (8, 8, 3))
    hub = next(la for la in from_folder._flatten_layers() if type(la).__name__ == "ResNetBackbone")
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(saved, hub.weights))
    assert recipe.main(args) == 0
    assert os.path.isfile(os.path.join(out, "best.weights.h5"))
    with pytest.raises(ValueError, match="not a local file"):
        configs.validate_config({**config, "backbone_weights": str(tmp_path / "missing.weights.h5")})
    keras.backend.clear_session()
