"""Errors a user can fix: bad recipes, inputs and arguments. The CLI prints them as
one line and exits with status 2."""


class UserError(Exception):
    """One-line message naming the input and what is wrong with it."""
