"""The WordNet gloss benchmark (keras_hier.glosses), checked against NLTK's own WordNet reader."""

import json
import os

import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier.glosses import load_glosses, split_by_class
from keras_hier.wordnet import get_wordnet

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gloss_cache"))


@pytest.fixture(scope="module")
def data(cache):
    return load_glosses(depth=5, min_count=50, seed=0, cache_dir=cache)


@pytest.fixture(scope="module")
def wordnet():
    return get_wordnet()


def nltk_path(synset):
    """The documented rule, written here independently: longest of NLTK's
    hypernym_paths(), ties broken by the smallest tuple of names."""
    paths = [tuple(s.name() for s in p) for p in synset.hypernym_paths()]
    longest = max(len(p) for p in paths)
    return min(p for p in paths if len(p) == longest)


def all_examples(data):
    synsets = np.concatenate([data.synsets[s] for s in SPLITS])
    texts = np.concatenate([data.split(s)[0] for s in SPLITS])
    labels = np.concatenate([data.split(s)[1] for s in SPLITS])
    return synsets, texts, labels


def test_sizes_of_the_default_benchmark(data):
    assert data.hierarchy.num_classes == data.info["num_classes"] == 139
    assert data.info["num_glosses"] == 66_542 and data.info["num_noun_synsets"] == 82_115
    assert data.hierarchy.level_sizes == (2, 10, 31, 74, 139)
    assert sum(data.info["sizes"].values()) == 66_542
    counts = np.bincount(all_examples(data)[2], minlength=139)
    assert counts.min() >= 50


def test_every_synset_in_exactly_one_split(data):
    sets = [set(data.synsets[s].tolist()) for s in SPLITS]
    assert sum(len(s) for s in sets) == len(set.union(*sets)) == data.info["num_glosses"]
    for name in SPLITS:  # no synset twice inside a split either
        assert len(data.synsets[name]) == len(set(data.synsets[name].tolist()))
    labels = {s: data.split(s)[1] for s in SPLITS}
    total = np.bincount(np.concatenate(list(labels.values())), minlength=139)
    test = np.bincount(labels["test"], minlength=139)
    validation = np.bincount(labels["validation"], minlength=139)
    # stratified: every class in every split, 10 % (rounded) in test and in validation
    np.testing.assert_array_equal(test, np.maximum(1, np.round(0.1 * total)))
    np.testing.assert_array_equal(validation, np.maximum(1, np.round(0.1 * total)))


def test_split_is_seeded(data, cache):
    again = load_glosses(seed=0, cache_dir=cache)
    assert again.info["cached"]
    for name in SPLITS:
        np.testing.assert_array_equal(again.synsets[name], data.synsets[name])
        np.testing.assert_array_equal(again.split(name)[1], data.split(name)[1])
    other = load_glosses(seed=1, cache_dir=cache)
    assert set(other.synsets["test"].tolist()) != set(data.synsets["test"].tolist())
    assert set(np.concatenate([other.synsets[s] for s in SPLITS]).tolist()) == \
        set(np.concatenate([data.synsets[s] for s in SPLITS]).tolist())


def test_labels_and_texts_agree_with_nltk_and_the_hierarchy(data, wordnet):
    synsets, texts, labels = all_examples(data)
    h = data.hierarchy
    rng = np.random.default_rng(0)
    for i in rng.choice(len(synsets), 300, replace=False):
        synset = wordnet.synset(str(synsets[i]))
        path = nltk_path(synset)
        assert path[5] == h.classes[labels[i]], synsets[i]
        assert texts[i] == synset.definition()
        # the class's tree path (its ancestors in the Hierarchy) lies on the synset's own path
        ancestors = list(h.paths[labels[i]][:-1])
        positions = [path.index(node) for node in ancestors]
        assert positions == sorted(positions) and max(positions, default=0) < 5


def test_hierarchy_is_the_from_wordnet_tree(data):
    reference = Hierarchy.from_wordnet(list(data.hierarchy.classes))
    assert reference == data.hierarchy
    np.testing.assert_array_equal(reference.distance_matrix(), data.hierarchy.distance_matrix())


def test_classes_are_complete(data, wordnet):
    """Every hyponym whose rule path passes a class at depth 5 carries that class (small classes)."""
    synsets, _, labels = all_examples(data)
    counts = np.bincount(labels, minlength=data.hierarchy.num_classes)
    for c in np.argsort(counts)[:3]:
        root = wordnet.synset(data.hierarchy.classes[c])
        below = {root} | set(root.closure(lambda s: s.hyponyms() + s.instance_hyponyms()))
        expected = {s.name() for s in below if nltk_path(s)[5:6] == (root.name(),)}
        assert expected == set(synsets[labels == c].tolist())


def test_dataset_and_subsample(cache):
    small = load_glosses(seed=3, cache_dir=cache, max_per_class=5, fractions=(0.6, 0.2, 0.2))
    labels = np.concatenate([small.split(s)[1] for s in SPLITS])
    assert np.bincount(labels).max() == 5 and small.info["num_glosses"] == labels.size
    assert np.all(np.bincount(small.test[1], minlength=139) == 1)
    batch = next(iter(small.dataset("test", batch_size=7)))
    assert batch[0].dtype.name == "string" and batch[0].shape == (7,)
    np.testing.assert_array_equal(batch[1].numpy(), small.test[1][:7])
    assert batch[0].numpy()[0].decode() == small.test[0][0]
    # the arrays go straight into Keras
    import keras

    from keras_hier import backbones, build_classifier

    model = build_classifier(backbones.text_bag(small.train[0], embedding_dim=4), head="softmax",
                             num_classes=139, embedding_dim=4)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*small.train, batch_size=64, epochs=1, verbose=0)
    assert model.predict(small.test[0], verbose=0).shape == (139, 139)


def test_other_depths_and_no_cache(tmp_path):
    shallow = load_glosses(depth=2, min_count=1000, cache_dir=False)
    assert shallow.hierarchy.num_classes == shallow.info["num_classes"] >= 3
    assert not any(tmp_path.iterdir())


def test_corrupt_cache_is_rebuilt(tmp_path, data):
    first = load_glosses(cache_dir=tmp_path, max_per_class=3)
    (name,) = [f for f in os.listdir(tmp_path) if f.startswith("nouns-")]
    (tmp_path / name).write_text('{"format": "keras_hier.glosses/1", "names": [')
    again = load_glosses(cache_dir=tmp_path, max_per_class=3)
    np.testing.assert_array_equal(again.test[1], first.test[1])
    assert json.loads((tmp_path / name).read_text())["names"][:1] == ["entity.n.01"]


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 0}, "depth"), ({"min_count": 0}, "min_count"), ({"depth": 2.5}, "depth"),
    ({"min_count": 10**6}, "no ancestor at depth 5"), ({"fractions": (0.5, 0.5, 0.5)}, "fractions"),
    ({"max_per_class": 2}, "max_per_class"),
])
def test_bad_arguments(kwargs, match, cache):
    with pytest.raises(ValueError, match=match):
        load_glosses(cache_dir=cache, **kwargs)


def test_split_by_class_reference():
    labels = np.repeat(np.arange(4), [3, 10, 25, 7])
    train, validation, test = split_by_class(labels, (0.7, 0.15, 0.15), seed=5)
    assert sorted(np.concatenate([train, validation, test]).tolist()) == list(range(labels.size))
    for c, n in enumerate([3, 10, 25, 7]):
        assert (labels[test] == c).sum() == max(1, round(0.15 * n))
    with pytest.raises(ValueError, match="too few"):
        split_by_class([0, 0, 1, 1, 1], (0.5, 0.25, 0.25))


def test_loaded_data_for_load_dataset(cache, monkeypatch):
    from keras_hier import backbones, glosses

    monkeypatch.setattr(glosses, "_cache_dir", lambda cache_dir: cache)
    train = glosses.loaded_data("train", batch_size=16, max_per_class=5)
    test = glosses.loaded_data("test", batch_size=16, max_per_class=5, shuffle=False)
    assert train.input_shape == () and train.hierarchy.num_classes == 139 == len(train.class_names)
    assert (train.num_examples, train.num_validation, test.num_examples) == (139 * 3, 139, 139)
    texts, labels = next(iter(test.dataset))
    assert texts.dtype.name == "string" and labels.shape == (16,)
    vec = backbones.text_vectorizer(train.dataset.map(lambda x, y: x), max_tokens=500)
    assert vec.vocabulary_size() == 500
    assert glosses.loaded_data("train", validation_split=0, max_per_class=5).validation is None
    for kwargs, match in [({"augment": True}, "augment"), ({"validation_split": 0.2}, "validation split"),
                          ({"hierarchy": Hierarchy.from_paths(["a/b"])}, "hierarchy"), ({"split": "val"}, "split")]:
        with pytest.raises(ValueError, match=match):
            glosses.loaded_data(**{"max_per_class": 5, **kwargs})
