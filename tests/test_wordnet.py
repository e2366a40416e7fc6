"""WordNet offline (NLTK data or a WordNet 3.0 database folder)."""

import warnings

import pytest

from keras_hier import Hierarchy, hierarchies
from keras_hier.wordnet import get_wordnet, hypernym_path


@pytest.fixture(scope="module")
def wordnet():
    return get_wordnet()


def test_dog_cat_closer_than_dog_truck(wordnet):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = Hierarchy.from_wordnet(["dog", "cat", "truck", "car"])
    t = h.distance_matrix()
    assert t[0, 1] < t[0, 2]
    assert t[2, 3] < t[0, 3]
    assert h.wordnet_choices["car"] == "car.n.01"
    assert any("first noun sense" in str(w.message) for w in caught)


def test_rule_is_longest_hypernym_path(wordnet):
    dog = wordnet.synset("dog.n.01")
    paths = dog.hypernym_paths()
    assert len(paths) > 1
    chosen = hypernym_path(dog)
    assert len(chosen) == max(len(p) for p in paths)
    assert "canine.n.02" in [s.name() for s in chosen]


def test_synset_names_overrides_and_errors(wordnet):
    h = Hierarchy.from_wordnet(["trout", "salmon", "oak"], synsets={"trout": "trout.n.02", "salmon": "salmon.n.01"})
    assert h.wordnet_choices["trout"] == "trout.n.02"
    h2 = Hierarchy.from_wordnet(["dog.n.01", "cat.n.01"])
    assert h2.classes == ("dog.n.01", "cat.n.01")
    with pytest.raises(ValueError, match="class 'qwertyzzz': WordNet has no noun synset"):
        Hierarchy.from_wordnet(["dog", "qwertyzzz"])
    with pytest.raises(ValueError, match="no synset 'dog.n.99'"):
        Hierarchy.from_wordnet(["dog.n.99"])


def test_builtin_cifar10_matches_wordnet(wordnet):
    names = list(hierarchies.cifar10().classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        derived = Hierarchy.from_wordnet(names, synsets=hierarchies.CIFAR10_SYNSETS)
    assert (derived.distance_matrix() == hierarchies.cifar10().distance_matrix()).all()


def test_missing_wordnet_gives_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="not a WordNet 3.0 database folder|WordNet 3.0 not found"):
        get_wordnet(str(tmp_path))


# ------------------------------------------------------------------ fast noun graph
def test_noun_graph_matches_nltk_names_and_the_path_rule(wordnet):
    import random

    from keras_hier.wordnet import noun_graph

    graph = noun_graph()
    assert len(graph.names) == 82115 and sum(graph.is_leaf) == 64958
    offsets = random.Random(0).sample(sorted(graph.index_of_offset), 300)
    sample = [wordnet.synset_from_pos_and_offset("n", offset) for offset in offsets] + [wordnet.synset("dog.n.01")]
    for synset in sample:
        index = graph.index_of_offset[synset.offset()]
        assert graph.names[index] == synset.name()
        assert graph.path(index) == tuple(s.name() for s in hypernym_path(synset))
        assert graph.is_leaf[index] == (not synset.hyponyms() and not synset.instance_hyponyms())
    with pytest.raises(ValueError, match="'n99999999' is not a WordNet 3.0 noun synset id"):
        graph.synset_index("n99999999")


def test_collapse_chains_rule():
    from keras_hier.wordnet import collapse_chains

    paths = [("e", "a", "b", "x"), ("e", "a", "b", "y"), ("e", "a", "c", "d", "z")]
    # c and d have one child each: dropped; e and a then form a chain below the root: dropped
    assert collapse_chains(paths) == [("b", "x"), ("b", "y"), ("z",)]
