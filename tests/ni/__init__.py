"""Property-based noninterference tests of the real platform (issue 7, docs/noninterference.md)."""
