"""The HTTP application: identity, pages, APIs."""
