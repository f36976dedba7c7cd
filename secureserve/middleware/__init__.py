"""Pure ASGI middleware, outermost first: context, in-flight limit, authentication."""
