"""Checkout alias: `recipes.configs` is `keras_hier.recipes.configs` (installed with keras_hier)."""

import sys

from keras_hier.recipes import configs as _configs

sys.modules[__name__] = _configs
