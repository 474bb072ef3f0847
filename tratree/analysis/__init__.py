"""Statistics of results tables and the regression gate that compares two of them."""
