"""Command-line recipes over keras_hier: `recipes.train` (one run end to end),
`recipes.configs` (the paper's and CPU-sized settings), `recipes.demo`."""
