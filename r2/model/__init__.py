"""The R² Block, heads, losses and decoding (R²-Tuning). Filled in by the model issue."""
