"""The main job behind `make demo`.

Step 1 (always): build the CIFAR-100 hierarchy, print it with its distance
statistics, and derive a hierarchy from WordNet offline.
"""

import argparse
import sys
import warnings


def show_hierarchies():
    from keras_hier import Hierarchy, hierarchies

    h = hierarchies.cifar100()
    print(h.summary())
    counts = h.distance_counts("path")
    print("CIFAR-100 path distances (ordered pairs):", counts)
    print("CIFAR-100 LCA heights (ordered pairs):  ", h.distance_counts("lca_height"))
    words = ["dog", "cat", "truck", "car", "rose", "tulip"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = Hierarchy.from_wordnet(words)
    except RuntimeError as error:  # no WordNet on this machine
        print(f"WordNet hierarchy skipped: {error}")
        return counts
    print("\nFrom WordNet:", w)
    for name, path in zip(w.classes, w.paths):
        print(f"  {name:6s} {'/'.join(path)}")
    t = w.distance_matrix()
    print("  path distance dog-cat =", t[0, 1], " dog-truck =", t[0, 2], " rose-tulip =", t[4, 5])
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    show_hierarchies()
    return 0


if __name__ == "__main__":
    sys.exit(main())
