"""Built-in hierarchies: the facts they are built from."""

import numpy as np

from keras_hier import Hierarchy, hierarchies


def test_cifar100_structure():
    h = hierarchies.cifar100()
    assert h.level_sizes == (3, 7, 20, 100) and h.is_uniform
    assert h.classes[:3] == ("apple", "aquarium_fish", "baby")
    assert list(h.classes) == sorted(h.classes)
    assert h.distance_counts() == {0: 100, 2: 400, 4: 1300, 6: 2000, 8: 6200}
    baby = h.class_index("baby")
    assert h.paths[baby] == ("Animals", "Mammals", "people", "baby")
    # 20 superclasses of 5 classes each
    assert sorted(np.bincount(h.ancestors(2)).tolist()) == [5] * 20
    # equals a table written independently in the CSV format
    table = "Class,Path,Number\n" + "".join(
        f"{name},{'/'.join(path)},{index}\n" for index, (name, path) in enumerate(zip(h.classes, h.paths)))
    np.testing.assert_array_equal(Hierarchy.from_csv(_write(table)).distance_matrix(), h.distance_matrix())


def _write(text):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(text)
    return f.name


def test_cifar10_and_fashion_mnist():
    c10 = hierarchies.cifar10()
    assert c10.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    t = c10.distance_matrix()
    i = c10.class_index
    assert t[i("cat"), i("dog")] < t[i("cat"), i("bird")] < t[i("cat"), i("truck")]
    assert set(c10.ancestors(0)[[i("airplane"), i("automobile"), i("ship"), i("truck")]]) == {0}
    fm = hierarchies.fashion_mnist()
    assert fm.num_classes == 10 and fm.classes[0] == "T-shirt_top" and fm.classes[9] == "Ankle_boot"
    t = fm.distance_matrix()
    assert t[fm.class_index("Sneaker"), fm.class_index("Sandal")] < t[fm.class_index("Sneaker"), fm.class_index("Coat")]


def test_imagenet1k_from_tfds_synset_ids_and_wordnet():
    import warnings

    h = hierarchies.imagenet1k()
    ids = hierarchies.imagenet1k_synset_ids()
    assert h.num_classes == 1000 and list(h.classes) == ids and ids[0] == "n01440764"
    assert h.wordnet_choices["n01440764"] == "tench.n.01"
    t = h.distance
    by_synset = {synset: h.class_index(wnid) for wnid, synset in h.wordnet_choices.items()}
    # two dog breeds are closer than a dog and a tabby cat, which are closer than a dog and a truck
    beagle, basset, tabby = by_synset["beagle.n.01"], by_synset["basset.n.01"], by_synset["tabby.n.01"]
    truck = by_synset["fire_engine.n.01"]
    assert t(beagle, basset) < t(beagle, tabby) < t(beagle, truck)
    # the same tree as Hierarchy.from_wordnet on the synset names (same rule, NLTK's own paths);
    # a subset collapses differently, so compare uncollapsed trees
    subset = ids[::25]
    full = hierarchies.imagenet1k(collapse=False)
    rows = np.array([full.class_index(wnid) for wnid in subset])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Hierarchy.from_wordnet([full.wordnet_choices[wnid] for wnid in subset], collapse=False)
    np.testing.assert_array_equal(full.distance(rows[:, None], rows[None, :]), reference.distance_matrix())


def test_wordnet_nouns_is_every_leaf_noun():
    h = hierarchies.wordnet_nouns()
    assert h.num_classes == 64958 and h.depth == 19 and not h.is_uniform
    assert sorted(h.level_names(0)) == ["abstraction.n.06", "physical_entity.n.01", "thing.n.08"]
    i = h.class_index
    assert h.distance(i("beagle.n.01"), i("basset.n.01")) < h.distance(i("beagle.n.01"), i("tabby.n.01"))
    assert Hierarchy.from_config(h.to_config()) == h
