"""Reading and writing hierarchy files (CSV tables, class folders, JSON, Newick) and the
array builders behind `Hierarchy`.

The `Hierarchy` constructors and writers delegate here: files and user input
become validated `(paths, class names)` and back, with errors that name the
file, line and class; `level_ids`, `parent_tables` and `height_tables` turn
paths into the per-level integer tables that `Hierarchy` owns and exposes.
"""

import csv
import io
import itertools
import json
import operator
import os

import numpy as np

__all__ = ["split_path", "read_csv_table", "scan_class_folders", "csv_text", "newick", "atomic_write",
           "encode_tree", "decode_tree", "check_paths", "level_ids", "classes_with_children", "parent_paths", "dict_paths", "read_json",
           "string_paths", "class_id_array",
           "parent_tables", "height_tables", "summary_text"]


def split_path(path, separator, where):
    """A path string (`"a/b/c"`, leading/trailing separators ignored) or list -> tuple of names.

    `where` names the culprit in error messages (file, line, class).
    """
    if isinstance(path, str):
        parts = list(map(str.strip, path.split(separator)))
        # Leading/trailing separators ("/data/a/b/") give empty end pieces.
        while parts and parts[0] == "":
            parts.pop(0)
        while parts and parts[-1] == "":
            parts.pop()
    elif isinstance(path, (list, tuple)):
        parts = [str(part).strip() for part in path]
    else:
        raise TypeError(f"{where}: a path must be a string or a list of names, got {type(path).__name__}")
    if not parts:
        raise ValueError(f"{where}: empty path")
    if "" in parts:
        raise ValueError(f"{where}: path {path!r} has an empty node name")
    return tuple(parts)


def read_csv_table(path, class_column="Class", path_column="Path", id_column="Number", delimiter=",",
                   path_separator="/", strip_prefix=None):
    """`(paths, classes)` in class-id order from a hierarchy table (see `Hierarchy.from_csv`)."""
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        line = text_line_of(path, error.start)
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}); save the table as UTF-8") from None
    if "\0" in text:
        raise ValueError(f"{path}, line {text.count(chr(10), 0, text.index(chr(0))) + 1}: NUL byte; "
                         "this looks like a binary file, not a CSV table")
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    try:
        columns = reader.fieldnames or []
    except csv.Error as error:
        raise ValueError(f"{path}: not a readable CSV table ({error})") from None
    for needed in (class_column, path_column):
        if needed not in columns:
            raise ValueError(f"{path}: no column {needed!r}; columns are {columns}")
    has_ids = id_column is not None and id_column in columns
    rows = []
    for line, row in _csv_rows(reader, path):
        name = (row.get(class_column) or "").strip()
        node_path = (row.get(path_column) or "").strip()
        where = f"{path}, line {line}"
        if not name:
            raise ValueError(f"{where}: empty class name")
        if strip_prefix:
            if not node_path.startswith(strip_prefix):
                raise ValueError(f"{where}: path {node_path!r} does not start with {strip_prefix!r}")
            node_path = node_path[len(strip_prefix):]
        parts = split_path(node_path, path_separator, f"{where} (class {name!r})")
        if parts[-1] != name:
            parts = parts + (name,)
        class_id = None
        if has_ids:
            raw = (row.get(id_column) or "").strip()
            try:
                class_id = int(raw)
            except ValueError:
                raise ValueError(f"{where}: class {name!r} has a non-integer id {raw!r}") from None
        rows.append((class_id, name, parts, where))
    if not rows:
        raise ValueError(f"{path}: no classes in the file")
    if has_ids:
        by_id = {}
        for class_id, name, _, where in rows:
            if class_id in by_id:
                raise ValueError(f"{where}: class {name!r} repeats id {class_id} of class {by_id[class_id]!r}")
            by_id[class_id] = name
        missing = sorted(set(range(len(rows))) - set(by_id))
        if missing:
            raise ValueError(f"{path}: class ids must be 0..{len(rows) - 1}; id {missing[0]} is missing "
                             f"(found ids {sorted(by_id)[:3]}...{sorted(by_id)[-1]})")
        rows.sort(key=lambda row: row[0])
    seen = {}
    for _, name, _, where in rows:
        if name in seen:
            raise ValueError(f"{where}: duplicate class name {name!r} (first at {seen[name]})")
        seen[name] = where
    return [row[2] for row in rows], [row[1] for row in rows]


def _csv_rows(reader, path):
    """`(line, row)` pairs; a csv.Error becomes a ValueError naming the file and line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: {error}") from None
        yield reader.line_num, row


def text_line_of(path, offset):
    """1-based line number of byte `offset` in the file `path`."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def scan_class_folders(root, include_hidden=False):
    """`(relative paths, class names)` of the folders under `root` that hold files."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory")
    relative_paths = []
    for folder, dirs, files in os.walk(root):
        if not include_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files = [f for f in files if not f.startswith(".")]
        dirs.sort()
        if files and os.path.abspath(folder) != os.path.abspath(root):
            relative_paths.append(tuple(os.path.relpath(folder, root).split(os.sep)))
    if not relative_paths:
        raise ValueError(f"{root}: no class folders (no sub-folder holds files)")
    relative_paths.sort()
    basenames = [parts[-1] for parts in relative_paths]
    names = [parts[-1] if basenames.count(parts[-1]) == 1 else "/".join(parts) for parts in relative_paths]
    return relative_paths, names


def csv_text(classes, paths, separator="/"):
    """`Class,Path,Number` text for `classes` and their node `paths`."""
    for name, node_path in zip(classes, paths):
        bad = [node for node in node_path[:-1] + (name,) if separator in node]
        if bad:
            raise ValueError(f"class {name!r}: node name {bad[0]!r} contains the path separator "
                             f"{separator!r}; pass another separator")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Class", "Path", "Number"])
    for index, (name, node_path) in enumerate(zip(classes, paths)):
        writer.writerow([name, separator.join(node_path[:-1] + (name,)), index])
    return buffer.getvalue()


def newick(paths):
    """The tree of node `paths` in Newick format (names quoted where needed)."""
    def quote(name):
        if any(ch in name for ch in " ,;:()[]'\t"):
            return "'" + name.replace("'", "''") + "'"
        return name

    children = {}
    for path in paths:
        for k in range(len(path)):
            children.setdefault(path[:k], [])
            if path[: k + 1] not in children[path[:k]]:
                children[path[:k]].append(path[: k + 1])

    def render(node):
        kids = children.get(node, [])
        if not kids:
            return quote(node[-1])
        inner = ",".join(render(kid) for kid in kids)
        return f"({inner})" + (quote(node[-1]) if node else "")

    return render(()) + ";"


def atomic_write(path, text):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def encode_tree(classes, paths, extra=None, levels=None):
    """One compact JSON string holding a tree: node names once, parent indices, class leaves.

    Nodes are the distinct path prefixes, numbered level by level (so a
    parent comes before its children); `"parent"` holds each node's parent
    index (-1 for the root's children), `"leaf"` each class's leaf node.
    `"classes"` is stored only when a class name differs from its leaf's node
    name. `levels`: `level_ids(paths)` when the caller has it (O(C) NumPy per
    level then; the names are the only per-node Python work).
    """
    ancestors, representatives = level_ids(paths) if levels is None else levels
    lengths = np.fromiter(map(len, paths), dtype=np.int64, count=len(paths))
    names, parent, leaf = [], [], np.empty(len(paths), dtype=np.int64)
    index = None
    for level, (ids, first) in enumerate(zip(ancestors, representatives)):
        real = np.flatnonzero(lengths[first] > level)  # the others repeat a shallower leaf
        names.extend(map(operator.itemgetter(level), map(paths.__getitem__, first[real].tolist())))
        parent.extend([-1] * len(real) if index is None else index[ancestors[level - 1][first[real]]].tolist())
        index = np.full(len(first), -1, dtype=np.int64)
        index[real] = len(names) - len(real) + np.arange(len(real))
        ends = lengths == level + 1
        leaf[ends] = index[ids[ends]]
    tree = {"nodes": names, "parent": parent, "leaf": leaf.tolist()}
    if list(classes) != list(map(operator.itemgetter(-1), paths)):
        tree["classes"] = list(classes)
    tree.update(extra or {})
    return json.dumps(tree, ensure_ascii=False, separators=(",", ":"))


def decode_tree(text, where="hierarchy config"):
    """Inverse of `encode_tree`: `(classes, paths, tree dict)`; errors name `where`."""
    if not isinstance(text, str):
        raise TypeError(f"{where}: 'tree' must be a JSON string, got {type(text).__name__}")
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{where}: 'tree' is not valid JSON ({error})") from None
    if not isinstance(tree, dict) or not all(isinstance(tree.get(key), list) for key in ("nodes", "parent", "leaf")):
        raise ValueError(f"{where}: 'tree' must be a JSON object with the lists 'nodes', 'parent' and 'leaf'")
    names, parent, leaf = tree["nodes"], tree["parent"], tree["leaf"]
    if len(parent) != len(names):
        raise ValueError(f"{where}: {len(names)} nodes but {len(parent)} parent entries")
    node_paths = []
    for node, (name, up) in enumerate(zip(names, parent)):
        if not isinstance(name, str) or not isinstance(up, int) or not -1 <= up < node:
            raise ValueError(f"{where}: node {node} ({name!r}) has an invalid name or parent {up!r} "
                             "(a parent must come before its child)")
        node_paths.append(node_paths[up] + (name,) if up >= 0 else (name,))
    if not all(isinstance(node, int) and 0 <= node < len(names) for node in leaf):
        raise ValueError(f"{where}: 'leaf' holds an invalid node index")
    paths = [node_paths[node] for node in leaf]
    classes = tree.get("classes")
    if classes is None:
        classes = [path[-1] for path in paths]
    elif not isinstance(classes, list) or len(classes) != len(paths):
        raise ValueError(f"{where}: 'classes' must be a list of {len(paths)} names")
    return classes, paths, tree


def check_paths(paths, classes=None):
    """Validated `(paths, classes)` tuples for the `Hierarchy` constructor.

    A path must be a sequence of non-empty node-name strings; a bare string is
    refused rather than split into characters. Errors name the class.
    """
    if isinstance(paths, (str, bytes, dict)):
        raise TypeError(f"paths must be a list of paths (sequences of node names), got {type(paths).__name__}; "
                        "use Hierarchy.from_paths for 'a/b/class' strings or a mapping")
    paths = list(paths)
    try:
        if any(isinstance(path, (str, bytes)) for path in paths):
            raise TypeError
        checked = list(map(tuple, paths))
    except TypeError:
        for index, path in enumerate(paths):
            if isinstance(path, (str, bytes)):
                raise TypeError(f"class id {index}: path {path!r} is a string, not a sequence of node names; "
                                "use Hierarchy.from_paths for 'a/b/class' strings") from None
            if not hasattr(path, "__iter__"):
                raise TypeError(f"class id {index}: path {path!r} is not a sequence of node names") from None
        raise
    if not checked:
        raise ValueError("a Hierarchy needs at least one class; got an empty list of paths")
    if classes is None:
        classes = [path[-1] if path else "" for path in checked]
    elif isinstance(classes, (str, bytes)):
        raise TypeError(f"classes must be a list of names, not the single string {classes!r}")
    classes = tuple(str(name) for name in classes)
    if len(classes) != len(checked):
        raise ValueError(f"{len(classes)} class names for {len(checked)} paths")
    first = {}
    for index, name in enumerate(classes):
        if first.setdefault(name, index) != index:
            raise ValueError(f"duplicate class name {name!r} (class ids {first[name]} and {index})")
    _check_node_names(checked, classes)
    by_path = {}
    for name, path in zip(classes, checked):
        if by_path.setdefault(path, name) != name:
            raise ValueError(f"classes {by_path[path]!r} and {name!r} have the same path {'/'.join(path)!r}")
    return tuple(checked), classes


def _check_node_names(paths, classes):
    try:
        names = set().union(*paths)
        bad = {name for name in names if not isinstance(name, str) or name == ""}
    except TypeError:  # an unhashable node name
        bad = None
    if bad is None or bad or not all(paths):
        for name, path in zip(classes, paths):
            if not path or any(not isinstance(part, str) or part == "" for part in path):
                raise ValueError(f"class {name!r}: invalid path {path!r} (node names must be non-empty strings)")


def level_ids(paths):
    """Node ids of every class at every level, numbered in order of first appearance.

    A leaf shallower than a level is its own node there. Returns two lists
    over levels: int32 node ids `[C]`, and for each node the first class
    below it (its representative, whose path prefix names the node).
    """
    lengths = np.fromiter(map(len, paths), dtype=np.int64, count=len(paths))
    codes = {name: code for code, name in enumerate(dict.fromkeys(itertools.chain.from_iterable(paths)))}
    flat = np.fromiter(map(codes.__getitem__, itertools.chain.from_iterable(paths)), dtype=np.int64,
                       count=int(lengths.sum()))
    absent = len(codes)
    table = np.full((len(paths), int(lengths.max())), absent, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    table[np.repeat(np.arange(len(paths)), lengths), np.arange(len(flat)) - starts] = flat
    ancestors, representatives = [], []
    previous = np.zeros(len(paths), dtype=np.int64)
    for level in range(table.shape[1]):
        # A node is (its parent node, its name); "absent" marks a shallow leaf repeating itself.
        _, first, inverse = np.unique(previous * (absent + 1) + table[:, level], return_index=True,
                                      return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(first), dtype=np.int64)
        rank[order] = np.arange(len(first))
        previous = rank[inverse.reshape(-1)]
        ancestors.append(previous.astype(np.int32))
        representatives.append(first[order])
    return ancestors, representatives


def classes_with_children(paths, ancestors):
    """bool [C]: classes whose path is a proper prefix of another class's path."""
    lengths = np.fromiter(map(len, paths), dtype=np.int64, count=len(paths))
    flags = np.zeros(len(paths), dtype=bool)
    for level, ids in enumerate(ancestors):
        here = lengths == level + 1
        if here.any():
            # Another class under a class's own leaf node extends its path.
            flags[here] = np.bincount(ids)[ids[here]] > 1
    return flags


def _parent_links(parents):
    """{child: parent or None} from a mapping or `(child, parent)` pairs; errors name the node."""
    if isinstance(parents, (str, bytes)):
        raise TypeError(f"parents must be a mapping child -> parent or (child, parent) pairs, not the string {parents!r}")
    pairs = parents.items() if isinstance(parents, dict) else parents
    parent_of = {}
    for item in pairs:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise ValueError(f"parents: {item!r} is not a (child, parent) pair")
        child, parent = str(item[0]), None if item[1] is None else str(item[1])
        if child in parent_of and parent_of[child] != parent:
            raise ValueError(f"node {child!r} has two parents: {parent_of[child]!r} and {parent!r}")
        if parent == child:
            raise ValueError(f"node {child!r} is its own parent (a cycle)")
        parent_of[child] = parent
    return parent_of


def parent_paths(parents, classes=None):
    """`(paths, classes)` from child -> parent links (see `Hierarchy.from_parents`)."""
    parent_of = _parent_links(parents)
    if classes is None:
        has_children = set(parent_of.values())
        classes = [child for child in parent_of if child not in has_children]
    elif isinstance(classes, (str, bytes)):
        raise TypeError(f"classes must be a list of names, not the single string {classes!r}")
    classes = [str(name) for name in classes]
    if not classes:
        raise ValueError("a Hierarchy needs at least one class; got an empty class list")
    known = set(parent_of) | {parent for parent in parent_of.values() if parent is not None}
    unknown = [name for name in classes if name not in known]
    if unknown:
        raise ValueError(f"classes not in the parent links: {', '.join(map(repr, unknown[:10]))}"
                         f"{' ...' if len(unknown) > 10 else ''}; give each a parent (None for a top-level class)")
    paths = []
    for name in classes:
        chain, node, visited = [name], name, {name}
        while parent_of.get(node) is not None:
            node = parent_of[node]
            if node in visited:
                raise ValueError(f"cycle in the parent links of class {name!r}: {' -> '.join(chain + [node])}")
            visited.add(node)
            chain.append(node)
        paths.append(tuple(reversed(chain)))
    return paths, classes


def dict_paths(data, where="hierarchy dict", separator="/"):
    """`(paths, classes, wordnet_choices)` from a `Hierarchy.to_dict()`-style dict.

    `"paths"` entries may be lists of node names or `"a/b/class"` strings;
    `"classes"` is optional (default: the last node of each path).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with the keys 'classes' and 'paths', "
                         f"got {type(data).__name__}")
    paths, classes = data.get("paths"), data.get("classes")
    if not isinstance(paths, list):
        raise ValueError(f"{where}: 'paths' must be a list of paths (lists of node names or 'a/b/class' "
                         f"strings), got {type(paths).__name__}")
    if classes is not None and not isinstance(classes, list):
        raise ValueError(f"{where}: 'classes' must be a list of names, got {type(classes).__name__}")
    if classes is not None and len(classes) != len(paths):
        raise ValueError(f"{where}: {len(classes)} classes but {len(paths)} paths")
    split = []
    for index, path in enumerate(paths):
        name = None if classes is None else classes[index]
        label = f"{where}, class {name!r}" if name is not None else f"{where}, class id {index}"
        if not isinstance(path, (str, list)) or not all(isinstance(part, str) for part in (
                [] if isinstance(path, str) else path)):
            raise ValueError(f"{label}: a path must be a list of node names or a string, got {path!r}")
        parts = split_path(path, separator, label) if isinstance(path, str) else tuple(path)
        if isinstance(path, str) and name is not None and parts[-1] != str(name):
            parts = parts + (str(name),)
        split.append(parts)
    choices = data.get("wordnet_choices") or {}
    if not isinstance(choices, dict):
        raise ValueError(f"{where}: 'wordnet_choices' must be a mapping class -> synset name")
    return split, classes, dict(choices)


def read_json(path_or_text):
    """A JSON value from JSON text or a file path; errors name the file (or say it was text)."""
    if not isinstance(path_or_text, (str, bytes, os.PathLike)):
        raise TypeError(f"from_json expects JSON text or a file path, got {type(path_or_text).__name__}")
    text, where = path_or_text, "JSON text"
    if isinstance(text, bytes) or isinstance(text, os.PathLike) or text.lstrip()[:1] not in ("{", "["):
        where = os.fsdecode(path_or_text)
        if not os.path.isfile(where):
            raise ValueError(f"{where!r} is neither JSON text (starting with '{{') nor an existing file")
        try:
            with open(where, encoding="utf-8-sig") as f:
                text = f.read()
        except UnicodeDecodeError as error:
            raise ValueError(f"{where}: not UTF-8 text ({error})") from None
    try:
        return json.loads(text), where
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None


def string_paths(paths, separator="/"):
    """`(paths, classes or None)` from `Hierarchy.from_paths` input: a mapping or a list of paths."""
    if isinstance(paths, dict):
        if not paths:
            raise ValueError("a Hierarchy needs at least one class; got an empty mapping")
        classes, split = [], []
        for name, path in paths.items():
            parts = split_path(path, separator, f"class {name!r}")
            if parts[-1] != str(name):
                parts = parts + (str(name),)
            classes.append(str(name))
            split.append(parts)
        return split, classes
    if isinstance(paths, (str, bytes)):
        raise TypeError(f"paths must be a mapping or a list of paths, not the single string {paths!r}")
    return [split_path(path, separator, f"class id {index}") for index, path in enumerate(paths)], None


def class_id_array(ids, num_classes, where):
    """int64 array of class ids in `[0, num_classes)`; whole-number floats pass; errors name `where`."""
    ids = np.asarray(ids)
    if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{where} must hold integer class ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= num_classes)
    if np.any(bad):
        raise ValueError(f"{where} holds class id {int(ids[bad].flat[0])} outside [0, {num_classes})")
    return ids


def parent_tables(ancestors, sizes):
    """Per level, int32 [sizes[level]]: each node's parent id at level - 1 (-1 at level 0)."""
    tables = [np.full(sizes[0], -1, dtype=np.int32)]
    for level in range(1, len(ancestors)):
        parent = np.empty(sizes[level], dtype=np.int32)
        parent[ancestors[level]] = ancestors[level - 1]
        tables.append(parent)
    return tables


def height_tables(ancestors, sizes, leaf_depths):
    """Per level, int32 [sizes[level]]: each node's height (longest path down to a leaf; leaves 0)."""
    tables = []
    for level, ids in enumerate(ancestors):
        deepest = np.zeros(sizes[level], dtype=np.int32)
        np.maximum.at(deepest, ids, leaf_depths)
        tables.append(np.maximum(deepest - (level + 1), 0).astype(np.int32))
    return tables


def summary_text(leaf_depths, level_names):
    """`Hierarchy.summary()`: classes, levels, nodes per level (first names), depth range."""
    uniform = bool(np.all(leaf_depths == len(level_names)))
    lines = [f"Hierarchy: {len(leaf_depths)} classes, {len(level_names)} levels (leaf depth "
             f"{leaf_depths.min()}..{leaf_depths.max()}{', uniform' if uniform else ', ragged'})"]
    for level, names in enumerate(level_names):
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        lines.append(f"  level {level}: {len(names)} nodes ({shown})")
    return "\n".join(lines)
