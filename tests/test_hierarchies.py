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
