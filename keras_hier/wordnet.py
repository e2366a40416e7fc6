"""Offline access to WordNet 3.0 through NLTK, and the tree rule for synsets.

Where WordNet comes from, in order:

1. NLTK's own data (`nltk.download('wordnet')` done earlier, or
   `NLTK_DATA`);
2. a WordNet 3.0 database folder (`wordnet_dir`, the `KERAS_HIER_WORDNET`
   environment variable, or Debian's `wordnet-base` at `/usr/share/wordnet`).
   NLTK only opens corpora under a folder on `nltk.data.path` and needs a
   `lexnames` file that Debian's copy lacks, so the database files are copied
   once (about 30 MB) into a cache folder (`KERAS_HIER_CACHE`, default
   `~/.cache/keras_hier`) together with the standard lexnames table;
3. otherwise a `RuntimeError` says how to install one.

Tree rule: a synset can have several hypernym paths (WordNet is a DAG; e.g.
`dog.n.01` has two). We take the LONGEST path of `synset.hypernym_paths()`,
ties broken by the lexicographically smallest tuple of synset names, so the
choice is deterministic and testable (`hypernym_path`). The longest path is
the most specific one, usually the taxonomic one: the shortest path of
`dog.n.01` runs through `domestic_animal.n.01` and would put dogs beside
"animal" rather than with cats under carnivore; the longest goes through
`canine.n.02`.
"""

import functools
import os
import shutil
import tempfile
import warnings

__all__ = ["get_wordnet", "class_synsets", "hypernym_path", "wordnet_paths", "collapse_chains", "noun_graph",
           "database_lines",
           "NounGraph", "LEXNAMES"]

DEBIAN_WORDNET = "/usr/share/wordnet"

# The standard table of lexicographer files (man 5 lexnames).
LEXNAMES = """\
00	adj.all	3
01	adj.pert	3
02	adv.all	4
03	noun.Tops	1
04	noun.act	1
05	noun.animal	1
06	noun.artifact	1
07	noun.attribute	1
08	noun.body	1
09	noun.cognition	1
10	noun.communication	1
11	noun.event	1
12	noun.feeling	1
13	noun.food	1
14	noun.group	1
15	noun.location	1
16	noun.motive	1
17	noun.object	1
18	noun.person	1
19	noun.phenomenon	1
20	noun.plant	1
21	noun.possession	1
22	noun.process	1
23	noun.quantity	1
24	noun.relation	1
25	noun.shape	1
26	noun.state	1
27	noun.substance	1
28	noun.time	1
29	verb.body	2
30	verb.change	2
31	verb.cognition	2
32	verb.communication	2
33	verb.competition	2
34	verb.consumption	2
35	verb.contact	2
36	verb.creation	2
37	verb.emotion	2
38	verb.motion	2
39	verb.perception	2
40	verb.possession	2
41	verb.social	2
42	verb.stative	2
43	verb.weather	2
44	adj.ppl	3
"""

_DATABASE_FILES = ("data.noun", "index.noun", "noun.exc", "data.verb", "index.verb", "verb.exc",
                   "data.adj", "index.adj", "adj.exc", "data.adv", "index.adv", "adv.exc")
_OPTIONAL_FILES = ("index.sense", "cntlist.rev", "lexnames")


def _cache_root():
    return os.environ.get("KERAS_HIER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keras_hier"))


def _nltk_wordnet():
    """NLTK's own WordNet data, or None (our cached copy does not count)."""
    import nltk

    own = os.path.abspath(_cache_root())
    found = None
    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            found = str(nltk.data.find(resource))
            break
        except LookupError:
            continue
    if found is None or os.path.abspath(found).startswith(own):
        return None
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except (OSError, LookupError):
        return None
    return wordnet


def _prepare_database_copy(database_dir):
    """Copies a WordNet database folder into an NLTK-readable corpus folder."""
    missing = [name for name in _DATABASE_FILES if not os.path.isfile(os.path.join(database_dir, name))]
    if missing:
        raise RuntimeError(f"{database_dir} is not a WordNet 3.0 database folder: missing {', '.join(missing)}")
    nltk_root = os.path.join(_cache_root(), "nltk_data")
    target = os.path.join(nltk_root, "corpora", "wordnet")
    if os.path.isfile(os.path.join(target, "lexnames")) and os.path.isfile(os.path.join(target, "data.noun")):
        return nltk_root, target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".wordnet-", dir=os.path.dirname(target))
    try:
        for name in _DATABASE_FILES + _OPTIONAL_FILES:
            source = os.path.join(database_dir, name)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(staging, name))
        if not os.path.isfile(os.path.join(staging, "lexnames")):
            with open(os.path.join(staging, "lexnames"), "w") as f:
                f.write(LEXNAMES)
        try:
            os.rename(staging, target)  # atomic; another process may have won
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return nltk_root, target


def get_wordnet(wordnet_dir=None):
    """Returns an NLTK WordNet reader, offline.

    Args:
        wordnet_dir: a WordNet 3.0 database folder to use instead of the
            default search (NLTK data, `$KERAS_HIER_WORDNET`,
            `/usr/share/wordnet`).

    Returns:
        An `nltk.corpus.reader.WordNetCorpusReader`.

    Raises:
        RuntimeError: no WordNet found; the message says how to get one.
    """
    return _cached_wordnet(None if wordnet_dir is None else os.fspath(wordnet_dir))


@functools.lru_cache(maxsize=4)
def _cached_wordnet(wordnet_dir):
    import nltk

    if wordnet_dir is None:
        reader = _nltk_wordnet()
        if reader is not None:
            return reader
        candidates = [os.environ.get("KERAS_HIER_WORDNET"), DEBIAN_WORDNET]
    else:
        candidates = [os.fspath(wordnet_dir)]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "data.noun")):
            nltk_root, corpus = _prepare_database_copy(candidate)
            if nltk_root not in nltk.data.path:
                nltk.data.path.append(nltk_root)
            return _OfflineWordNetReader(corpus, None)
    raise RuntimeError(
        "WordNet 3.0 not found. Install it one of these ways: "
        "`python -c \"import nltk; nltk.download('wordnet')\"` (needs internet), "
        "`apt-get install wordnet-base` (Debian/Ubuntu: /usr/share/wordnet), "
        "or pass wordnet_dir=/path/to/wordnet-3.0/dict (or set KERAS_HIER_WORDNET)."
    )


def _offline_reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class OfflineWordNetReader(WordNetCorpusReader):
        """Skips the sense-key remapping for the Open Multilingual Wordnet,
        which needs files a plain WordNet 3.0 database does not have."""

        def map_wn(self, version="wordnet"):
            return None

    return OfflineWordNetReader


def _OfflineWordNetReader(root, omw_reader):
    import warnings

    with warnings.catch_warnings():
        # "The multilingual functions are not available": expected offline.
        warnings.simplefilter("ignore", UserWarning)
        return _offline_reader_class()(root, omw_reader)


def class_synsets(classes, synsets=None, wordnet_dir=None):
    """Chooses a noun synset for every class.

    Args:
        classes: class names (`"pickup_truck"`, `"maple tree"`) or synset names
            (`"dog.n.01"`).
        synsets: optional mapping class name -> synset name (overrides).
        wordnet_dir: see `get_wordnet`.

    Returns:
        `(chosen, ambiguous)`: a dict class name -> synset, and the list of
        class names whose word had several noun senses (the first was taken).

    Raises:
        ValueError: naming a class with no noun synset, or a bad override.
    """
    wordnet = get_wordnet(wordnet_dir)
    overrides = dict(synsets or {})
    unknown = set(overrides) - {str(name) for name in classes}
    if unknown:
        raise ValueError(f"synsets given for names that are not classes: {sorted(unknown)}")
    chosen, ambiguous = {}, []
    for name in classes:
        name = str(name)
        key = overrides.get(name, name)
        if _looks_like_synset(key):
            try:
                chosen[name] = wordnet.synset(key)
            except Exception:  # nltk raises WordNetError / ValueError
                raise ValueError(f"class {name!r}: WordNet has no synset {key!r}") from None
            continue
        lemma = key.strip().replace(" ", "_").replace("-", "_")
        senses = wordnet.synsets(lemma, pos="n")
        if not senses:
            raise ValueError(f"class {name!r}: WordNet has no noun synset for {lemma!r}; "
                             f"pass synsets={{{name!r}: 'word.n.01'}}")
        if len(senses) > 1:
            ambiguous.append(name)
        chosen[name] = senses[0]
    return chosen, ambiguous


def _looks_like_synset(key):
    parts = key.rsplit(".", 2)
    return len(parts) == 3 and parts[1] in ("n", "v", "a", "s", "r") and parts[2].isdigit()


def hypernym_path(synset):
    """The one hypernym path used for the tree (root first, synset last).

    Longest of `synset.hypernym_paths()`, ties broken by the smallest tuple
    of synset names.
    """
    paths = synset.hypernym_paths()
    return min(paths, key=lambda path: (-len(path), tuple(s.name() for s in path)))


def wordnet_paths(classes, synsets=None, collapse=True, wordnet_dir=None, stacklevel=2):
    """The tree paths `Hierarchy.from_wordnet` builds (see it for the rule).

    Warns once, listing the class names that had several noun senses.

    Returns:
        `(class names, paths, chosen synset names)`; every path ends with its
        class name.
    """
    if isinstance(classes, (str, bytes)):
        raise TypeError(f"classes must be a list of names, not the single string {classes!r}")
    chosen, ambiguous = class_synsets(classes, synsets=synsets, wordnet_dir=wordnet_dir)
    class_names = [str(name) for name in classes]
    paths = [tuple(s.name() for s in hypernym_path(chosen[name])) for name in class_names]
    by_synset = {}
    for name, path in zip(class_names, paths):
        if path[-1] in by_synset:
            raise ValueError(f"classes {by_synset[path[-1]]!r} and {name!r} map to the same synset {path[-1]!r}")
        by_synset[path[-1]] = name
    # A class synset may be a hypernym of another class: then it is both a
    # leaf and an internal node, which the Hierarchy constructor handles.
    paths = collapse_chains(paths) if collapse else drop_common_top(paths)
    paths = [path[:-1] + (name,) for path, name in zip(paths, class_names)]
    if ambiguous:
        warnings.warn("WordNet: took the first noun sense for ambiguous class names "
                      + ", ".join(f"{name!r} -> {chosen[name].name()}" for name in ambiguous)
                      + "; pass synsets={name: 'word.n.NN'} to choose another (see Hierarchy.wordnet_choices).",
                      stacklevel=stacklevel + 1)
    return class_names, paths, {name: chosen[name].name() for name in class_names}


def drop_common_top(paths):
    """Drops leading nodes shared by every path (the implicit root replaces them)."""
    paths = list(paths)
    while len(paths) > 1 and all(len(p) > 1 and p[0] == paths[0][0] for p in paths):
        paths = [p[1:] for p in paths]
    return paths


def collapse_chains(paths):
    """Removes path nodes that have exactly one child (keeps the leaves) and the common top.

    Example:

    >>> collapse_chains([("a", "b", "x"), ("a", "b", "y"), ("a", "c", "d", "z")])
    [('b', 'x'), ('b', 'y'), ('z',)]
    """
    children = {}
    for path in paths:
        for k in range(1, len(path)):
            children.setdefault(path[:k], set()).add(path[: k + 1])
    collapsed = []
    for path in paths:
        kept = [path[k - 1] for k in range(1, len(path)) if len(children[path[:k]]) > 1]
        collapsed.append(tuple(kept) + (path[-1],))
    # The implicit root must branch too: drop a top node shared by all classes.
    return drop_common_top(collapsed)


# ------------------------------------------------------------------ fast noun graph
class NounGraph:
    """WordNet 3.0's noun synsets read straight from `data.noun` / `index.noun` (about a second).

    Attributes:
        names: synset names (`"dog.n.01"`, exactly NLTK's names), by index.
        index_of_offset: dict database offset -> index (ImageNet's `n02084071`
            is offset 2084071).
        hypernyms: per synset, the indices of its hypernyms and instance
            hypernyms (the links `hypernym_paths()` follows).
        is_leaf: per synset, True when it has no hyponym or instance hyponym.
    """

    def __init__(self, names, index_of_offset, hypernyms, is_leaf):
        self.names, self.index_of_offset = names, index_of_offset
        self.hypernyms, self.is_leaf = hypernyms, is_leaf
        self._paths = {}

    def path(self, index):
        """`hypernym_path` of synset `index` as a tuple of synset names (root first).

        Longest path, ties broken by the smallest tuple of names: the best path
        to a synset extends the best path to one of its hypernyms, so one
        memoised pass gives every synset's path.
        """
        stack = [index]
        while stack:
            node = stack[-1]
            if node in self._paths:
                stack.pop()
                continue
            missing = [up for up in self.hypernyms[node] if up not in self._paths]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            candidates = [self._paths[up] for up in self.hypernyms[node]] or [()]
            best = min(candidates, key=lambda path: (-len(path), path))
            self._paths[node] = best + (self.names[node],)
        return self._paths[index]

    def synset_index(self, wnid):
        """Index of an ImageNet-style id `"n02084071"`; `ValueError` naming it when unknown."""
        text = str(wnid)
        if len(text) != 9 or text[0] != "n" or not text[1:].isdigit() or int(text[1:]) not in self.index_of_offset:
            raise ValueError(f"{text!r} is not a WordNet 3.0 noun synset id (like 'n02084071')")
        return self.index_of_offset[int(text[1:])]


def database_lines(name, wordnet_dir=None):
    """Lines of a WordNet database file from `wordnet_dir`, NLTK's data or Debian's folder."""
    folders = [os.fspath(wordnet_dir)] if wordnet_dir is not None else []
    if wordnet_dir is None:
        import nltk

        try:
            folders.append(str(nltk.data.find("corpora/wordnet")))
        except LookupError:
            pass
        folders += [os.environ.get("KERAS_HIER_WORDNET"), DEBIAN_WORDNET]
    for folder in folders:
        if folder and os.path.isfile(os.path.join(folder, name)):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                return f.read().splitlines()
    reader = get_wordnet(wordnet_dir)  # a zipped NLTK corpus, or a clear RuntimeError
    return reader.open(name).read().splitlines()


def noun_graph(wordnet_dir=None):
    """The WordNet 3.0 noun `NounGraph` (cached; offline; about a second).

    Args:
        wordnet_dir: a WordNet 3.0 database folder (see `get_wordnet`).
    """
    return _cached_noun_graph(None if wordnet_dir is None else os.fspath(wordnet_dir))


@functools.lru_cache(maxsize=2)
def _cached_noun_graph(wordnet_dir):
    senses = {}
    for line in database_lines("index.noun", wordnet_dir):
        if line.startswith(" "):
            continue
        fields = line.split()
        num_synsets, num_pointers = int(fields[2]), int(fields[3])
        senses[fields[0]] = [int(offset) for offset in fields[6 + num_pointers: 6 + num_pointers + num_synsets]]
    names, index_of_offset, links, has_children = [], {}, [], []
    for line in database_lines("data.noun", wordnet_dir):
        if line.startswith(" "):
            continue
        fields = line.split(" | ", 1)[0].split()
        offset, num_words = int(fields[0]), int(fields[3], 16)
        lemma = fields[4].lower()
        start = 5 + 2 * num_words  # after the pointer count
        pointers = [fields[start + 4 * k: start + 4 * k + 4] for k in range(int(fields[start - 1]))]
        index_of_offset[offset] = len(names)
        names.append(f"{lemma}.n.{senses[lemma].index(offset) + 1:02d}")
        links.append([int(target) for symbol, target, pos, _ in pointers if symbol in ("@", "@i") and pos == "n"])
        has_children.append(any(symbol in ("~", "~i") for symbol, *_ in pointers))
    hypernyms = [tuple(index_of_offset[offset] for offset in targets) for targets in links]
    return NounGraph(names, index_of_offset, hypernyms, [not flag for flag in has_children])
