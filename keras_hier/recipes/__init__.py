"""Runnable recipes over keras_hier, installed with the package.

- `keras_hier.recipes.train` (`keras-hier-train`): one run end to end
  (train, resume, evaluate, export);
- `keras_hier.recipes.cli`: its command line (options with help and defaults);
- `keras_hier.recipes.configs`: the paper's and CPU-sized settings, and their validation;
- `keras_hier.recipes.checkpoints`: the run folder's backup and best checkpoint;
- `keras_hier.recipes.paper` (`keras-hier-paper`): the paper's grid and its table;
- `keras_hier.recipes.random_cnn` (`keras-hier-random-cnn`): the random-weight CNN study;
- `keras_hier.recipes.demo` (`keras-hier-demo`): `make demo`.

In a checkout, the top-level `recipes/` folder holds thin entry points
(`python -m recipes.train` runs this package's `train`); it is not installed.
"""
