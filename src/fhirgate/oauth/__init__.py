"""The authorization server core. It imports no web framework: surfaces adapt it."""
