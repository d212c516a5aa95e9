"""HTTP: routes, request/response schemas, auth, middleware, error rendering."""
