"""Training exports, format conversions and reports of a version."""
