#!/usr/bin/env python
"""Thin wrapper: `python export/smoke_test.py ...` = `keras-hier-smoke-test ...` (keras_hier/serving_kit/smoke_test.py)."""

import sys

from keras_hier.serving_kit.smoke_test import main

if __name__ == "__main__":
    sys.exit(main())
