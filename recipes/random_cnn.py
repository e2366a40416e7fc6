"""Checkout entry point: `python -m recipes.random_cnn` runs `keras_hier.recipes.random_cnn` (installed with keras_hier)."""

import sys

from keras_hier.recipes import random_cnn as _recipe

if __name__ == "__main__":
    sys.exit(_recipe.main())
sys.modules[__name__] = _recipe  # `import recipes.random_cnn` is the package module itself
