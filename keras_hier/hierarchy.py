"""The class hierarchy: one tree, and the one place tree distances are computed.

A `Hierarchy` is an immutable tree over C classes; class ids are positions in
`Hierarchy.classes`. Every class has a path of node names from the top level
down to the class itself (`Animals/Mammals/people/baby`), with an implicit root
above the first element. Paths may have different lengths (ragged trees).

Levels are numbered 0 (the top level below the root) to `depth - 1`. Every
level is a partition of the classes: a leaf shallower than a level maps to
itself there, so `ancestors(depth - 1)` is the identity. Nodes are grouped by
their full path prefix, never by bare name: two subtrees may both hold a node
called `other`.

A class whose path is a proper prefix of another class's path (a class that
also has sub-classes) becomes a leaf child of the internal node of the same
name, one level deeper, so that every class is a leaf.

`Hierarchy` owns the tree tables every other module uses (`ancestors`,
`node_ids`, `level_offsets`, `parents`, `node_heights`, `ancestor_heights`)
and the tree distances: `distance(a, b, kind)` for given pairs of classes in
O(depth) each, at any number of classes, and `distance_matrix(kind)` for
small C. `to_config()` / `from_config()` is the one way losses, layers and
metrics serialise a hierarchy: a small dict whose tree is one JSON string.
"""

import functools
import json
import os

import numpy as np

from keras_hier.hierarchy_io import (atomic_write, check_paths, classes_with_children, csv_text, decode_tree,
                                     dict_paths, class_id_array, encode_tree, height_tables, level_ids, newick, parent_paths,
                                     parent_tables, summary_text, read_csv_table,
                                     read_json, scan_class_folders, string_paths)

__all__ = ["Hierarchy", "DISTANCE_KINDS", "check_distance_kind"]

#: The tree distances between classes (`Hierarchy.distance`, `distance_matrix`).
DISTANCE_KINDS = ("path", "lca_height")

CONFIG_FORMAT = "keras_hier.Hierarchy/1"

#: Largest C for which `distance_matrix` builds its C x C table (50 000: 9.3 GiB of int32).
MATRIX_LIMIT = 50_000


def check_distance_kind(kind, where="kind"):
    """Returns `kind` if it is one of `DISTANCE_KINDS`, else raises `ValueError` naming it.

    Example:

    >>> check_distance_kind("path")
    'path'
    """
    if not isinstance(kind, str) or kind not in DISTANCE_KINDS:
        raise ValueError(f"unknown distance kind {where}={kind!r}; use one of {', '.join(map(repr, DISTANCE_KINDS))}")
    return kind


def _readonly(array):
    array.setflags(write=False)
    return array


class Hierarchy:
    """An immutable class hierarchy (a rooted tree whose leaves are the classes).

    Build one with a constructor (`from_paths`, `from_csv`, `from_parents`,
    `from_directory`, `from_wordnet`, `from_dict`) or take a built-in one from
    `keras_hier.hierarchies`.

    Args:
        paths: sequence of C paths in class-id order; each a tuple of node names
            from the top level down to the class leaf.
        classes: optional class names (default: the last element of every path).

    Example:

    >>> h = Hierarchy.from_paths({"rose": "plant/flower/rose",
    ...                           "tulip": "plant/flower/tulip",
    ...                           "truck": "vehicle/road/truck"})
    >>> h.distance_matrix()[0].tolist()
    [0, 2, 6]
    >>> h.level_names(0)
    ['plant', 'vehicle']
    """

    def __init__(self, paths, classes=None):
        paths, classes = check_paths(paths, classes)
        ancestors, representatives = level_ids(paths)
        # A class that is also an internal node becomes a leaf child of that node.
        internal = classes_with_children(paths, ancestors)
        if internal.any():
            paths = tuple(path + (path[-1],) if flag else path for path, flag in zip(paths, internal))
            ancestors, representatives = level_ids(paths)
        self._classes = classes
        self._paths = paths
        self._set_levels(ancestors, representatives)
        self.wordnet_choices = {}

    # ------------------------------------------------------------------ build
    def _set_levels(self, ancestors, representatives):
        depth = len(ancestors)
        leaf_depths = np.fromiter(map(len, self._paths), dtype=np.int32, count=len(self._paths))
        self._depth = depth
        self._leaf_depths = _readonly(leaf_depths)
        self._ancestors = tuple(_readonly(ids) for ids in ancestors)
        self._representatives = tuple(representatives)
        sizes = [len(first) for first in representatives]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        self._level_sizes = tuple(sizes)
        self._level_offsets = _readonly(offsets)
        self._node_ids = _readonly(np.stack(ancestors, axis=1) + offsets[None, :-1])
        self._level_mask = _readonly(np.arange(depth)[None, :] < leaf_depths[:, None])

    def _level_keys(self, level):
        """Full node paths (tuples) at `level`, indexed by node id."""
        return [self._paths[c][: level + 1] for c in self._representatives[level]]

    # ------------------------------------------------------------ properties
    @property
    def classes(self):
        """Class names in class-id order (tuple of str)."""
        return self._classes

    @property
    def num_classes(self):
        """Number of classes C."""
        return len(self._classes)

    def __len__(self):
        return len(self._classes)

    @property
    def paths(self):
        """Per class, the tuple of node names from level 0 down to the leaf."""
        return self._paths

    @property
    def depth(self):
        """Number of levels below the root (the deepest leaf's depth)."""
        return self._depth

    @property
    def leaf_depths(self):
        """int32 [C]: depth of every class leaf (1 = directly under the root)."""
        return self._leaf_depths

    @property
    def is_uniform(self):
        """True when all leaves are at the same depth."""
        return bool(np.all(self._leaf_depths == self._depth))

    @property
    def level_sizes(self):
        """Number of nodes at each level (tuple of int)."""
        return self._level_sizes

    @property
    def node_ids(self):
        """int32 [C, depth]: ancestor ids, unique across levels.

        Column `l` is `ancestors(l) + sum(level_sizes[:l])`, so a single
        segment-sum with `num_node_ids` segments covers every level.
        """
        return self._node_ids

    @property
    def num_node_ids(self):
        """Total number of nodes over all levels (segments for `node_ids`)."""
        return int(sum(self._level_sizes))

    @property
    def level_mask(self):
        """bool [C, depth]: True where the level is on the class's own path.

        False on levels below a shallow leaf, where the class maps to itself.
        """
        return self._level_mask

    def class_index(self, name):
        """The class id of `name`; raises `KeyError` naming it when unknown."""
        try:
            return self._class_ids[name]
        except KeyError:
            raise KeyError(f"unknown class {name!r}; the hierarchy has {self.num_classes} classes "
                           f"({', '.join(self._classes[:5])}{', ...' if self.num_classes > 5 else ''})") from None

    @functools.cached_property
    def _class_ids(self):
        return {name: index for index, name in enumerate(self._classes)}

    def _check_level(self, level):
        if not isinstance(level, (int, np.integer)):
            raise TypeError(f"level must be an int, got {level!r}")
        if not -self._depth <= level < self._depth:
            raise ValueError(f"level {level} out of range: this hierarchy has levels 0..{self._depth - 1}")
        return int(level) % self._depth

    def ancestors(self, level):
        """Node id of every class's ancestor at `level` (int32 [C]).

        Args:
            level: 0 is the top level below the root; negative levels count
                from the bottom (`-1` is the class level, the identity).

        Returns:
            int32 array of ids in `0 .. num_nodes(level) - 1`; a leaf shallower
            than `level` maps to its own node.
        """
        return self._ancestors[self._check_level(level)]

    def num_nodes(self, level):
        """Number of nodes at `level`."""
        return self._level_sizes[self._check_level(level)]

    def level_names(self, level):
        """Bare node names at `level`, indexed by node id (list of str)."""
        return [key[-1] for key in self._level_keys(self._check_level(level))]

    def level_paths(self, level, separator="/"):
        """Full node paths at `level` (unique), indexed by node id."""
        return [separator.join(key) for key in self._level_keys(self._check_level(level))]

    # ------------------------------------------------------------ tree tables
    @property
    def level_offsets(self):
        """int32 [depth + 1]: where each level's ids start in `node_ids` (last = `num_node_ids`)."""
        return self._level_offsets

    def parents(self, level):
        """int32 [num_nodes(level)]: the id of every node's parent at `level - 1` (-1 at level 0).

        Example:

        >>> h = Hierarchy.from_paths(["a/x/1", "a/y/2", "b/z/3"])
        >>> h.parents(1).tolist(), h.parents(0).tolist()
        ([0, 0, 1], [-1, -1])
        """
        return self._parents[self._check_level(level)]

    @functools.cached_property
    def _parents(self):
        return tuple(_readonly(table) for table in parent_tables(self._ancestors, self._level_sizes))

    def node_heights(self, level):
        """int32 [num_nodes(level)]: height of every node at `level` (longest path down to a leaf).

        A leaf (also a shallow leaf repeated below its depth) has height 0;
        the root, not listed, has height `depth`.
        """
        return self._node_heights[self._check_level(level)]

    @functools.cached_property
    def _node_heights(self):
        tables = height_tables(self._ancestors, self._level_sizes, self._leaf_depths)
        return tuple(_readonly(table) for table in tables)

    def ancestor_heights(self):
        """int32 [C, depth + 1]: height of every class's ancestor at each level.

        Column 0 is the root (height = tree depth), column l + 1 the level-l
        ancestor (`node_heights(l)[ancestors(l)]`); below a shallow leaf the
        leaf's own height 0 repeats.
        """
        return self._ancestor_heights

    @functools.cached_property
    def _ancestor_heights(self):
        columns = [np.full(self.num_classes, self._depth, dtype=np.int32)]
        columns += [self._node_heights[level][self._ancestors[level]] for level in range(self._depth)]
        return _readonly(np.stack(columns, axis=1))

    # ------------------------------------------------------------- distances
    def lca_depths(self, a, b):
        """Depth of the lowest common ancestor of classes `a` and `b` (root = 0; `a == b`: the leaf depth).

        `a` and `b` are broadcast against each other; O(depth) per pair.
        """
        a = class_id_array(a, self.num_classes, "Hierarchy.distance: a")
        b = class_id_array(b, self.num_classes, "Hierarchy.distance: b")
        shape = np.broadcast_shapes(a.shape, b.shape)
        shared = np.zeros(shape, dtype=np.int32)
        for level in range(self._depth):
            ids = self._ancestors[level]
            # Ancestors agree on a prefix of levels; on the class's own path only.
            same = (ids[a] == ids[b]) & self._level_mask[a, level]
            if not same.any():
                break
            shared += same
        return shared

    def distance(self, a, b, kind="path"):
        """Tree distance between classes `a` and `b`, vectorised, without a C x C matrix.

        Equal to `distance_matrix(kind)[a, b]`, computed from the ancestor
        tables in O(depth) per pair, so it works at any number of classes.

        Args:
            a: class id or integer array of class ids.
            b: class id(s), broadcast against `a` (e.g. `a[:, None]`, `b[None, :]`).
            kind: `"path"` (edges between the leaves) or `"lca_height"`
                (height of the lowest common ancestor; 0 when `a == b`).

        Returns:
            int32 array of the broadcast shape of `a` and `b`.

        Example:

        >>> h = Hierarchy.from_paths(["plant/flower/rose", "plant/flower/tulip", "vehicle/truck"])
        >>> h.distance([0, 0, 1], [1, 2, 1]).tolist()
        [2, 5, 0]
        >>> h.distance(0, 2, kind="lca_height").tolist()
        3
        """
        check_distance_kind(kind)
        a = class_id_array(a, self.num_classes, "Hierarchy.distance: a")
        b = class_id_array(b, self.num_classes, "Hierarchy.distance: b")
        lca = self.lca_depths(a, b)
        if kind == "path":
            return (self._leaf_depths[a] + self._leaf_depths[b] - 2 * lca).astype(np.int32)
        height = self._ancestor_heights[a, lca]
        return np.where(a == b, 0, height).astype(np.int32)

    def lca_depth_matrix(self):
        """int32 [C, C]: depth of the lowest common ancestor (root = 0).

        The diagonal holds each leaf's own depth. O(C^2) memory: use
        `lca_depths` for given pairs at large C.
        """
        return self._lca_depth

    @functools.cached_property
    def _lca_depth(self):
        ids = np.arange(self.num_classes)
        return _readonly(self.lca_depths(ids[:, None], ids[None, :]))

    def distance_matrix(self, kind="path"):
        """Tree distance between every pair of classes (int32 [C, C]).

        O(C^2) memory: for given pairs at large C use `distance(a, b, kind)`.

        Args:
            kind: `"path"`: number of edges between the two leaves,
                d(a) + d(b) - 2 d(lca). `"lca_height"`: height of the lowest
                common ancestor (longest downward path from it to a leaf; 0 on
                the diagonal), as in "Making Better Mistakes". On a tree whose
                leaves all have the same depth, path = 2 * lca_height.

        Returns:
            A read-only int32 matrix, symmetric, zero exactly on the diagonal.
        """
        check_distance_kind(kind)
        if self.num_classes > MATRIX_LIMIT:
            raise ValueError(f"distance_matrix at {self.num_classes} classes would need "
                             f"{4 * self.num_classes ** 2 / 2 ** 30:.0f} GiB; use Hierarchy.distance(a, b) for the "
                             f"pairs you need (O(depth) each)")
        return self._path_distance if kind == "path" else self._lca_height

    @functools.cached_property
    def _path_distance(self):
        d = self._leaf_depths
        return _readonly((d[:, None] + d[None, :] - 2 * self._lca_depth).astype(np.int32))

    @functools.cached_property
    def _lca_height(self):
        height = self._ancestor_heights[np.arange(self.num_classes)[:, None], self._lca_depth]
        np.fill_diagonal(height, 0)
        return _readonly(height.astype(np.int32))

    def similarity_matrix(self, rule="exp", beta=1.0, distance="path"):
        """Class similarity S for `SimLoss` from the tree (float32 [C, C]).

        See `keras_hier.similarity.tree_similarity` for the rules.
        """
        from keras_hier.similarity import tree_similarity

        return tree_similarity(self, rule=rule, beta=beta, distance=distance)

    def distance_counts(self, kind="path"):
        """{distance: number of ordered class pairs} (diagonal included)."""
        values, counts = np.unique(self.distance_matrix(kind), return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    # ----------------------------------------------------------- constructors
    @classmethod
    def from_paths(cls, paths, separator="/"):
        """Builds a hierarchy from class paths.

        Args:
            paths: a mapping class name -> path, or a list of paths in class-id
                order. A path is a string (`"a/b/class"`) or a list of node
                names. When a mapping's path does not end with the class name,
                the class is added as a leaf below the path.
            separator: separator of string paths.

        Returns:
            A `Hierarchy`.

        Example:

        >>> Hierarchy.from_paths(["fruit/apple", "fruit/pear", "tree/oak"]).classes
        ('apple', 'pear', 'oak')
        """
        paths, classes = string_paths(paths, separator)
        return cls(paths, classes)

    @classmethod
    def from_csv(cls, path, class_column="Class", path_column="Path", id_column="Number",
                 delimiter=",", path_separator="/", strip_prefix=None):
        """Reads a hierarchy table such as `Class,Path,Number`.

        The last path element is the class itself when it equals the class
        name (`Animals/Mammals/people/baby` for `baby`); otherwise the path is
        taken as the class's parent and the class is added below it.

        Args:
            path: CSV file path.
            class_column: column with the class names.
            path_column: column with the node paths.
            id_column: column with integer class ids (0..C-1, no gaps or
                duplicates); when absent from the file, rows give the order.
            delimiter: field delimiter (e.g. `"|"`).
            path_separator: separator inside a path (e.g. `"//"`).
            strip_prefix: a leading path prefix to drop (e.g. a dataset folder
                such as `/DATA/plankton/MicroS/`); rows not starting with it
                are an error.

        Returns:
            A `Hierarchy`.
        """
        paths, classes = read_csv_table(path, class_column=class_column, path_column=path_column,
                                        id_column=id_column, delimiter=delimiter,
                                        path_separator=path_separator, strip_prefix=strip_prefix)
        return cls(paths, classes)

    @classmethod
    def from_parents(cls, parents, classes=None):
        """Builds a hierarchy from child -> parent links.

        Args:
            parents: a mapping child -> parent, or an iterable of
                `(child, parent)` pairs (a child listed with two different
                parents is an error). Nodes without a parent hang from the
                root; `None` as a parent means the root.
            classes: the class (leaf) names in class-id order; default: every
                node that is no other node's parent, in order of appearance.
                A class missing from the links is an error naming it (give a
                top-level class the parent `None`).

        Returns:
            A `Hierarchy`.

        Example:

        >>> Hierarchy.from_parents({"rose": "flower", "oak": "tree", "flower": "plant", "tree": "plant"}).paths
        (('plant', 'flower', 'rose'), ('plant', 'tree', 'oak'))
        """
        paths, classes = parent_paths(parents, classes)
        return cls(paths, classes)

    @classmethod
    def from_directory(cls, root, include_hidden=False):
        """Builds a hierarchy from nested folders.

        Every folder that holds files directly is a class; the folders above it
        (below `root`) are its ancestors. Folders are visited in sorted order,
        so class ids are deterministic. A class is named by its folder name, or
        by its path relative to `root` when two class folders share a name.

        Args:
            root: the top folder.
            include_hidden: also visit names starting with ".".

        Returns:
            A `Hierarchy`.
        """
        root = os.fspath(root)
        relative_paths, names = scan_class_folders(root, include_hidden=include_hidden)
        hierarchy = cls(relative_paths, names)
        hierarchy.class_folders = tuple(os.path.join(root, *parts) for parts in relative_paths)
        return hierarchy

    @classmethod
    def from_wordnet(cls, classes, synsets=None, collapse=True, wordnet_dir=None):
        """Builds a tree from WordNet hypernym paths (offline).

        Rule for synsets with several hypernym paths (WordNet is a DAG): take
        the longest (most specific) path of `synset.hypernym_paths()`, ties
        broken by the lexicographically smallest sequence of synset names
        (see `keras_hier.wordnet.hypernym_path`). Chains of nodes
        with a single child are collapsed (`collapse=True`) so only
        informative levels remain; the common top (`entity.n.01`) goes too.

        Args:
            classes: class names (`"dog"`, `"pickup_truck"`) or synset names
                (`"dog.n.01"`).
            synsets: optional mapping class name -> synset name overriding
                the default choice (the first noun sense).
            collapse: remove single-child chains.
            wordnet_dir: a WordNet 3.0 database folder; default: NLTK's data,
                else `/usr/share/wordnet` (Debian's `wordnet-base`).

        Returns:
            A `Hierarchy` whose `wordnet_choices` maps each class to the synset
            used. A warning lists the words that had several noun senses.
        """
        from keras_hier.wordnet import wordnet_paths

        class_names, paths, choices = wordnet_paths(classes, synsets=synsets, collapse=collapse,
                                                    wordnet_dir=wordnet_dir, stacklevel=2)
        hierarchy = cls(paths, class_names)
        hierarchy.wordnet_choices = choices
        return hierarchy

    # --------------------------------------------------------- serialisation
    def to_dict(self):
        """A JSON-able dict: `{"classes": [...], "paths": [[...], ...]}`."""
        out = {"format": "keras_hier.Hierarchy/1", "classes": list(self._classes),
               "paths": [list(path) for path in self._paths]}
        if self.wordnet_choices:
            out["wordnet_choices"] = dict(self.wordnet_choices)
        return out

    @classmethod
    def from_dict(cls, data, where="hierarchy dict"):
        """Inverse of `to_dict`; `"paths"` may also hold `"a/b/class"` strings, `"classes"` is optional."""
        if isinstance(data, dict) and "tree" in data:
            return cls.from_config(data)
        paths, classes, choices = dict_paths(data, where)
        hierarchy = cls(paths, classes)
        hierarchy.wordnet_choices = choices
        return hierarchy

    def to_config(self):
        """A small JSON-safe dict holding the whole tree as ONE string (for Keras `get_config`).

        Node names are stored once with parent indices, so a 100 000-class
        tree saves quickly and Keras never walks thousands of nested strings.
        `Hierarchy.from_config` is the inverse.

        Example:

        >>> h = Hierarchy.from_paths(["plant/rose", "plant/tulip"])
        >>> sorted(h.to_config())
        ['format', 'num_classes', 'tree']
        >>> Hierarchy.from_config(h.to_config()) == h
        True
        """
        extra = {"wordnet_choices": dict(self.wordnet_choices)} if self.wordnet_choices else None
        return {"format": CONFIG_FORMAT, "num_classes": self.num_classes,
                "tree": encode_tree(self._classes, self._paths, extra, (self._ancestors, self._representatives))}

    @classmethod
    def from_config(cls, config):
        """Inverse of `to_config` (also accepts a `to_dict()` dict or a `Hierarchy`)."""
        if isinstance(config, Hierarchy):
            return config
        if not isinstance(config, dict):
            raise TypeError(f"Hierarchy.from_config expects the dict of Hierarchy.to_config(), "
                            f"got {type(config).__name__}")
        if "tree" not in config:
            return cls.from_dict(config)
        if config.get("format", CONFIG_FORMAT) != CONFIG_FORMAT:
            raise ValueError(f"hierarchy config: unknown format {config['format']!r} (this keras_hier reads "
                             f"{CONFIG_FORMAT!r})")
        classes, paths, tree = decode_tree(config["tree"])
        hierarchy = cls(paths, classes)
        hierarchy.wordnet_choices = dict(tree.get("wordnet_choices") or {})
        return hierarchy

    def to_json(self, path=None):
        """JSON text of `to_dict()`; also written atomically to `path` if given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_text):
        """Reads `to_json` output (or a `from_dict` dict) from a file path or a JSON string."""
        data, where = read_json(path_or_text)
        return cls.from_dict(data, where=where)

    def to_csv(self, path=None, separator="/"):
        """Writes `Class,Path,Number` (readable by `from_csv`); returns the text."""
        text = csv_text(self._classes, self._paths, separator)
        if path is not None:
            atomic_write(path, text)
        return text

    def to_newick(self):
        """The tree in Newick format (names quoted where needed)."""

        return newick(self._paths)

    # ----------------------------------------------------------------- misc
    def summary(self):
        """A few lines: classes, levels, nodes per level, depth range."""
        return summary_text(self._leaf_depths, [self.level_names(level) for level in range(self._depth)])

    def __repr__(self):
        sizes = "/".join(str(size) for size in self._level_sizes)
        return f"<Hierarchy: {self.num_classes} classes, {self._depth} levels ({sizes} nodes)>"

    def __eq__(self, other):
        if self is other:
            return True
        return (isinstance(other, Hierarchy) and hash(self) == hash(other) and self._classes == other._classes
                and self._paths == other._paths)

    def __hash__(self):
        return self._hash

    @functools.cached_property
    def _hash(self):
        # Cached: decoders and losses key caches on the hierarchy, and hashing
        # every path of a 100 000-class tree on each lookup would dominate.
        return hash((self._classes, self._paths))

