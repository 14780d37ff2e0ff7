"""The algebra: small pure transformations that the aliases chain together."""
