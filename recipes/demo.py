"""Checkout entry point: `python -m recipes.demo` runs `keras_hier.recipes.demo` (installed with keras_hier)."""

import sys

from keras_hier.recipes import demo as _recipe

if __name__ == "__main__":
    sys.exit(_recipe.main())
sys.modules[__name__] = _recipe  # `import recipes.demo` is the package module itself
