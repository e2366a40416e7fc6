#!/usr/bin/env python
"""Thin wrapper: `python export/client.py ...` = `keras-hier-client ...` (keras_hier/serving_kit/client.py)."""

import sys

from keras_hier.serving_kit.client import main

if __name__ == "__main__":
    sys.exit(main())
