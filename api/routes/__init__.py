"""HTTP routes. Thin: parse, authorise, call :mod:`api.services`, shape the response."""
