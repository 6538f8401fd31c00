"""HTTP surfaces of the authorization server: routes, error rendering, the resource guard."""
