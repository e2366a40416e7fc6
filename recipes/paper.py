"""Checkout entry point: `python -m recipes.paper` runs `keras_hier.recipes.paper` (installed with keras_hier)."""

import sys

from keras_hier.recipes import paper as _recipe

if __name__ == "__main__":
    sys.exit(_recipe.main())
sys.modules[__name__] = _recipe  # `import recipes.paper` is the package module itself
