"""Thin entry points for a checkout: `python -m recipes.train`, `recipes.demo`, `recipes.paper`,
`recipes.random_cnn`. The code lives in `keras_hier.recipes` (installed with the package, with
the console scripts `keras-hier-train`, `keras-hier-demo`, `keras-hier-paper`,
`keras-hier-random-cnn`); this folder is not installed, so it never shadows a user's own `recipes/`."""
