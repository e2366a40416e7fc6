"""Built-in hierarchies for standard datasets (no files, no WordNet needed).

- `cifar100()`: the 4-level CIFAR-100 tree (3 / 7 / 20 / 100 nodes): the
  official 20 superclasses (5 classes each) grouped under 7 groups under 3
  top groups, with the standard alphabetical fine-label order (apple = 0).
- `cifar10()`: derived from WordNet 3.0 with `Hierarchy.from_wordnet` (longest
  hypernym path, single-child chains collapsed) and stored here as a table.
- `fashion_mnist()`: a hand-made grouping (clothing / footwear / accessories).
- `imagenet1k()`: the ImageNet-2012 classes (the synset ids that
  tensorflow-datasets ships) placed in WordNet 3.0 (offline).
- `wordnet_nouns()`: every leaf noun of WordNet 3.0 (64 958 classes, up to
  19 levels): a large, irregular real tree for scale tests.

The two WordNet trees use the rule of `Hierarchy.from_wordnet`: a synset
with several hypernym paths takes the longest one, ties broken by the
smallest tuple of synset names (`keras_hier.wordnet.hypernym_path`).
"""

import importlib.resources

from keras_hier.hierarchy import Hierarchy

__all__ = ["cifar100", "cifar10", "fashion_mnist", "imagenet1k", "imagenet1k_synset_ids", "wordnet_nouns",
           "CIFAR100_SUPERCLASSES", "CIFAR100_GROUPS"]

# The official CIFAR-100 superclass table.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}

# top group -> group -> superclasses (the two upper levels of the paper's tree).
CIFAR100_GROUPS = {
    "Animals": {
        "Mammals": ["people", "large_carnivores", "aquatic_mammals", "large_omnivores_and_herbivores",
                    "medium_mammals", "small_mammals"],
        "Non-mammal_vertebrates": ["fish", "reptiles"],
        "Invertebrates": ["insects", "non-insect_invertebrates"],
    },
    "Artificial": {
        "Artificial_indoor": ["household_furniture", "food_containers", "household_electrical_devices"],
        "Artificial_outdoor": ["vehicles_1", "large_man-made_outdoor_things", "vehicles_2"],
    },
    "Nature_non-animal": {
        "Plants": ["fruit_and_vegetables", "trees", "flowers"],
        "Nature_non-specific_organism": ["large_natural_outdoor_scenes"],
    },
}

# Derived once with Hierarchy.from_wordnet(CIFAR10 names) on WordNet 3.0
# (synsets: automobile -> car.n.01, others -> <name>.n.01); node names are the
# synset lemmas (vehicle = vehicle.n.01, craft = craft.n.02, ...).
_CIFAR10_PATHS = [
    ("airplane", ("vehicle", "craft")),
    ("automobile", ("vehicle", "motor_vehicle")),
    ("bird", ("vertebrate",)),
    ("cat", ("vertebrate", "placental", "carnivore")),
    ("deer", ("vertebrate", "placental", "ungulate")),
    ("dog", ("vertebrate", "placental", "carnivore")),
    ("frog", ("vertebrate",)),
    ("horse", ("vertebrate", "placental", "ungulate")),
    ("ship", ("vehicle", "craft")),
    ("truck", ("vehicle", "motor_vehicle")),
]
CIFAR10_SYNSETS = {"airplane": "airplane.n.01", "automobile": "car.n.01", "bird": "bird.n.01",
                   "cat": "cat.n.01", "deer": "deer.n.01", "dog": "dog.n.01", "frog": "frog.n.01",
                   "horse": "horse.n.01", "ship": "ship.n.01", "truck": "truck.n.01"}

# Fashion-MNIST label order; "T-shirt/top" is written T-shirt_top so that
# paths can use "/" as a separator.
_FASHION_MNIST_PATHS = [
    ("T-shirt_top", ("clothing", "upper_body")),
    ("Trouser", ("clothing", "lower_or_full_body")),
    ("Pullover", ("clothing", "upper_body")),
    ("Dress", ("clothing", "lower_or_full_body")),
    ("Coat", ("clothing", "upper_body")),
    ("Sandal", ("footwear",)),
    ("Shirt", ("clothing", "upper_body")),
    ("Sneaker", ("footwear",)),
    ("Bag", ("accessories",)),
    ("Ankle_boot", ("footwear",)),
]


def cifar100():
    """The 4-level CIFAR-100 hierarchy (3 / 7 / 20 / 100 nodes).

    Returns:
        A uniform `Hierarchy` whose class ids are the standard fine labels
        (alphabetical: apple = 0, aquarium_fish = 1, baby = 2, ...). Path
        distances take the values 0, 2, 4, 6, 8.

    Example:

    >>> h = cifar100()
    >>> h.distance_counts()
    {0: 100, 2: 400, 4: 1300, 6: 2000, 8: 6200}
    """
    parents = {}
    for top, groups in CIFAR100_GROUPS.items():
        for group, superclasses in groups.items():
            for superclass in superclasses:
                for name in CIFAR100_SUPERCLASSES[superclass]:
                    parents[name] = (top, group, superclass, name)
    classes = sorted(parents)
    return Hierarchy([parents[name] for name in classes], classes)


def cifar10():
    """CIFAR-10 classes in a WordNet-derived tree (2 to 4 levels deep).

    vehicle: craft (airplane, ship), motor_vehicle (automobile, truck);
    vertebrate: bird, frog, placental: carnivore (cat, dog), ungulate (deer,
    horse). Class ids are the standard CIFAR-10 labels (airplane = 0).
    """
    hierarchy = Hierarchy([path + (name,) for name, path in _CIFAR10_PATHS], [n for n, _ in _CIFAR10_PATHS])
    hierarchy.wordnet_choices = dict(CIFAR10_SYNSETS)
    return hierarchy


def fashion_mnist():
    """Fashion-MNIST classes in a hand-made tree.

    clothing: upper_body (T-shirt_top, Pullover, Coat, Shirt),
    lower_or_full_body (Trouser, Dress); footwear (Sandal, Sneaker,
    Ankle_boot); accessories (Bag). Class ids are the standard labels.
    """
    return Hierarchy([path + (name,) for name, path in _FASHION_MNIST_PATHS],
                     [name for name, _ in _FASHION_MNIST_PATHS])


def imagenet1k_synset_ids():
    """The 1 000 ImageNet-2012 synset ids (`"n01440764"`, ...) in tensorflow-datasets' label order.

    Read at run time from `tensorflow_datasets/datasets/imagenet2012/labels.txt`,
    the file tfds uses for `features["label"]`, so class ids match tfds labels.
    """
    try:
        text = importlib.resources.files("tensorflow_datasets.datasets.imagenet2012").joinpath("labels.txt").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise RuntimeError("imagenet1k() reads the ImageNet-2012 synset ids shipped with tensorflow-datasets "
                           f"(datasets/imagenet2012/labels.txt): {error}; pip install 'tensorflow-datasets>=4.9'") from None
    ids = text.split()
    if len(ids) != 1000 or len(set(ids)) != 1000:
        raise RuntimeError(f"tensorflow_datasets' imagenet2012/labels.txt holds {len(ids)} ids "
                           f"({len(set(ids))} distinct), expected 1000")
    return ids


def imagenet1k(collapse=True, wordnet_dir=None):
    """The ImageNet-2012 (ILSVRC, 1 000 classes) hierarchy from WordNet 3.0, offline.

    Class names are the synset ids tfds uses (`"n01440764"`), in tfds label
    order; internal nodes are synset names (`"dog.n.01"`), and
    `wordnet_choices` maps each id to its synset name (`"tench.n.01"`).

    Args:
        collapse: remove single-child chains (as `Hierarchy.from_wordnet`).
        wordnet_dir: a WordNet 3.0 database folder (see `keras_hier.wordnet`).

    Returns:
        A ragged `Hierarchy` of 1 000 classes.

    Example:

    >>> h = imagenet1k()
    >>> h.num_classes, h.wordnet_choices[h.classes[0]]
    (1000, 'tench.n.01')
    """
    from keras_hier.wordnet import noun_graph

    graph = noun_graph(wordnet_dir)
    ids = imagenet1k_synset_ids()
    paths = [graph.path(graph.synset_index(wnid)) for wnid in ids]
    hierarchy = _from_synset_paths(paths, ids, collapse)
    hierarchy.wordnet_choices = {wnid: path[-1] for wnid, path in zip(ids, paths)}
    return hierarchy


def wordnet_nouns(collapse=False, wordnet_dir=None):
    """Every leaf noun synset of WordNet 3.0 as a class: 64 958 classes, up to 19 levels.

    A leaf is a noun synset without hyponyms or instance hyponyms. Class
    names and node names are synset names; class ids follow WordNet's file
    order. Builds in a few seconds, offline (reads `data.noun` directly).

    Args:
        collapse: remove single-child chains (default False: WordNet's levels
            as they are, below the shared top `entity.n.01`).
        wordnet_dir: a WordNet 3.0 database folder (see `keras_hier.wordnet`).

    Returns:
        A ragged `Hierarchy`.
    """
    from keras_hier.wordnet import noun_graph

    graph = noun_graph(wordnet_dir)
    paths = [graph.path(index) for index, leaf in enumerate(graph.is_leaf) if leaf]
    return _from_synset_paths(paths, [path[-1] for path in paths], collapse)


def _from_synset_paths(paths, classes, collapse):
    from keras_hier.wordnet import collapse_chains, drop_common_top

    paths = collapse_chains(paths) if collapse else drop_common_top(paths)
    return Hierarchy([path[:-1] + (name,) for path, name in zip(paths, classes)], classes)
