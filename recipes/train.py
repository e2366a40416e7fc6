"""Checkout entry point: `python -m recipes.train` runs `keras_hier.recipes.train` (installed with keras_hier)."""

import sys

from keras_hier.recipes import train as _recipe

if __name__ == "__main__":
    sys.exit(_recipe.main())
sys.modules[__name__] = _recipe  # `import recipes.train` is the package module itself
